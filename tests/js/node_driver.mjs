// node tests/js/node_driver.mjs [ALKPUBSUB_JS]
//
// JS spokes in Node (with the `ws` package), driven by pytest over stdio: one JSON
// command per stdin line ({seq, op, ...}, see harness.mjs); one JSON line per reply
// ({seq, ok, result | error}) or report ({event, spoke, ...}) on stdout. Commands run
// concurrently (a pending flush does not hold up the next command). Ends with stdin.
import { createInterface } from 'node:readline';
import { pathToFileURL } from 'node:url';
import { WebSocket } from 'ws';
import { createHarness } from './harness.mjs';

const modulePath = process.argv[2] ?? new URL('../../alkpubsub/static/alkpubsub.js', import.meta.url).pathname;
const alkpubsub = await import(pathToFileURL(modulePath).href);

const write = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
const handle = createHarness({ alkpubsub, WebSocket, report: write });

const pending = new Set();
for await (const line of createInterface({ input: process.stdin, crlfDelay: Infinity })) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  const reply = handle(command).then((outcome) => write({ seq: command.seq, ...outcome }));
  pending.add(reply);
  reply.finally(() => pending.delete(reply));
}
await Promise.all(pending);
await handle({ op: 'reset' });
