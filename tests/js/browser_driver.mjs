// node tests/js/browser_driver.mjs BASE_URL [ARTIFACTS_DIR]
//
// Debian's Chromium, launched by playwright-core (never a downloaded browser), driven
// by pytest over stdio with the protocol of node_driver.mjs. Each JS spoke lives in its
// own page (BASE_URL/js/harness.html, served by the test on 127.0.0.1, or from another
// origin with the `harness` command), where harness.mjs runs it with the browser's own
// WebSocket. Page commands (goto, click, fill, waitForText, text, evaluate, screenshot)
// drive any other page, such as the examples.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.ALKPUBSUB_CHROMIUM ?? '/usr/bin/chromium';
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const baseUrl = process.argv[2];
const write = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);

const userDataDir = mkdtempSync(join(tmpdir(), 'alkpubsub-chromium-'));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath: CHROMIUM,
  headless: true,
  args: CHROMIUM_ARGS,
  viewport: { width: 1000, height: 700 },
});
const pages = new Map(); // spoke, raw socket or page name -> Page

async function openPage(name, url) {
  const page = await context.newPage();
  pages.set(name, page);
  await page.exposeFunction('report', (message) => write(message));
  page.on('console', (message) => {
    if (message.type() === 'error') write({ event: 'console', page: name, text: message.text() });
  });
  page.on('pageerror', (error) => write({ event: 'pageerror', page: name, message: error.message }));
  await page.goto(url);
  return page;
}

// A harness page named `name`, from the test's server, or from `url` (another origin).
async function harnessPage(name, url = `${baseUrl}/js/harness.html`) {
  if (pages.has(name)) return pages.get(name);
  const page = await openPage(name, url);
  await page.waitForFunction(() => window.harness !== undefined, null, { timeout: 10_000 });
  return page;
}

const pageOps = {
  goto: async ({ page, url }) => void (await openPage(page, url)),
  // Spokes named `page` then live in a harness page loaded from `url`.
  harness: async ({ page, url }) => void (await harnessPage(page, url)),
  click: ({ page, selector }) => pages.get(page).click(selector),
  fill: ({ page, selector, value }) => pages.get(page).fill(selector, value),
  text: ({ page, selector }) => pages.get(page).textContent(selector),
  waitForText: ({ page, selector, text, timeoutMs = 10_000 }) =>
    pages.get(page).waitForFunction(
      ([selector, text]) => document.querySelector(selector)?.textContent.includes(text),
      [selector, text],
      { timeout: timeoutMs },
    ).then(() => null),
  evaluate: ({ page, expression }) => pages.get(page).evaluate(expression),
  screenshot: ({ page, path }) => pages.get(page).screenshot({ path, fullPage: true }).then(() => path),
  async reset(command) {
    const outcomes = await Promise.all(
      [...pages.values()].map((page) => page.evaluate((c) => window.harness?.(c), command).catch(() => null)),
    );
    await Promise.all([...pages.values()].map((page) => page.close()));
    pages.clear();
    return outcomes.length;
  },
};

async function handle(command) {
  try {
    if (command.op in pageOps) return { ok: true, result: (await pageOps[command.op](command)) ?? null };
    const page = await harnessPage(command.spoke ?? command.name);
    return await page.evaluate((c) => window.harness(c), command);
  } catch (error) {
    return { ok: false, error: { name: error.name, message: error.message } };
  }
}

const pending = new Set();
try {
  for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
    if (!line.trim()) continue;
    const command = JSON.parse(line);
    const reply = handle(command).then((outcome) => write({ seq: command.seq, ...outcome }));
    pending.add(reply);
    reply.finally(() => pending.delete(reply));
  }
  await Promise.all(pending);
} finally {
  await context.close();
  rmSync(userDataDir, { recursive: true, force: true });
}
