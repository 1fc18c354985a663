"""examples/web_dashboard.py in Chromium: a click publishes from the browser, a Python
worker answers, a Python publisher elsewhere reaches the page; a screenshot is kept
in artifacts/ (git-ignored)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator

import pytest_asyncio

from alkpubsub import make_event
from alkpubsub.testing import within
from alkpubsub.transports.ws import WebSocketSpoke

from .js_support import ROOT, TIMEOUT, JsDriver

EXAMPLE = ROOT / "examples" / "web_dashboard.py"
ARTIFACTS = ROOT / "artifacts"


@pytest_asyncio.fixture
async def dashboard_url() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), "--port", "0", "--step", "0.05",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        line = (await within(process.stdout.readline(), TIMEOUT)).decode()
        assert line.startswith("dashboard: http://127.0.0.1:"), line
        yield line.split(": ", 1)[1].strip()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        _, err = await within(process.communicate(), TIMEOUT)
        assert b"Traceback" not in err, err.decode()


async def test_dashboard_page_publishes_and_shows_live_updates(
    browser_js: JsDriver, dashboard_url: str
) -> None:
    page, other_tab = "dashboard", "other-tab"
    for name in (page, other_tab):
        await browser_js.request("goto", page=name, url=dashboard_url)
        await browser_js.request("waitForText", page=name, selector="#status", text="online as")
    await browser_js.request("evaluate", page=other_tab, expression="window.spoke.flush()")

    # A click publishes job.request from the browser; the Python worker runs the job.
    await browser_js.request("fill", page=page, selector="#label", value="build the docs")
    await browser_js.request("click", page=page, selector="#start")
    await browser_js.request("waitForText", page=page, selector="#jobs", text="done")
    row = await browser_js.request("text", page=page, selector="#jobs tr")
    assert row is not None
    assert "build the docs" in row
    assert "100%" in row
    # The worker announced the job on job.created:dashboard: the other tab follows it.
    await browser_js.request("waitForText", page=other_tab, selector="#jobs", text="build the docs")

    # A Python publisher on another connection reaches the page.
    await browser_js.request("evaluate", page=page, expression="window.spoke.flush()")
    async with WebSocketSpoke(dashboard_url.replace("http://", "ws://") + "ws") as python:
        python.dispatch_event(make_event("notice", "dashboard", "Deploy freeze at 17:00 ✈"))
        await within(python.flush())
    await browser_js.request("waitForText", page=page, selector="#notice", text="Deploy freeze")
    # The page removed the job's status listener when the job was done.
    job_listeners = (
        "window.spoke.listenerCount('job.status:' + document.querySelector('#jobs tr').dataset.job)"
    )
    assert await browser_js.request("evaluate", page=page, expression=job_listeners) == 0

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "web-dashboard.png"
    await browser_js.request("screenshot", page=page, path=str(shot))
    assert shot.stat().st_size > 1000
    print(f"screenshot: {shot}")
    assert browser_js.reported("pageerror") == []
    assert browser_js.reported("console") == []
