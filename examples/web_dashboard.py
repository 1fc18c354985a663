"""A live job dashboard in the browser, on alkpubsub's JavaScript spoke.

    pip install -e '.[ws]' aiohttp
    python examples/web_dashboard.py            # then open the printed URL
    python examples/web_dashboard.py --port 0   # any free port

One origin on 127.0.0.1 serves the page (examples/web/), the JS module as installed
with the package (/static/alkpubsub.js) and the hub, mounted at /ws in aiohttp.

The page subscribes to ``job.status:<job id>``, waits for ``flush()`` (the
subscription is live on the hub) and publishes ``job.request:dashboard``. The Python
worker below hears that on the hub, announces ``job.created:dashboard`` (other tabs
then follow the job too) and publishes the job's progress. Anything published to
``notice:dashboard`` (from any spoke, e.g. ``alkpubsub pub ws://127.0.0.1:8080/ws
notice dashboard '"hello"'``) shows up in every open page.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.resources
import itertools
from pathlib import Path
from typing import Any

from aiohttp import web

from alkpubsub import Event, make_event
from alkpubsub.transports.ws import WebSocketHub

PAGE_DIR = Path(__file__).resolve().parent / "web"
STEPS = [("queued", 0), ("running", 25), ("running", 50), ("running", 75), ("done", 100)]


class JobWorker:
    """Runs the jobs that pages request; its "work" is a pause per step."""

    def __init__(self, hub: WebSocketHub, step_seconds: float) -> None:
        self.hub = hub
        self.step_seconds = step_seconds
        self.tasks: set[asyncio.Task[None]] = set()
        self.numbers = itertools.count(1)
        hub.add_event_listener("job.request:dashboard", self.on_request)

    def on_request(self, event: Event) -> None:
        request = event.detail.payload if isinstance(event.detail.payload, dict) else {}
        job_id = request.get("job_id")
        if not isinstance(job_id, str) or not job_id:
            return  # not a request we understand
        label = str(request.get("label") or f"job {next(self.numbers)}")[:60]
        self.hub.dispatch_event(
            make_event("job.created", "dashboard", {"job_id": job_id, "label": label})
        )
        task = asyncio.get_running_loop().create_task(self.run(job_id))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self, job_id: str) -> None:
        for state, progress in STEPS:
            self.hub.dispatch_event(
                make_event("job.status", job_id, {"state": state, "progress": progress})
            )
            await asyncio.sleep(self.step_seconds)


def build_app(hub: WebSocketHub) -> web.Application:
    static = importlib.resources.files("alkpubsub") / "static"

    async def page(request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE_DIR / "index.html")

    async def module(request: web.Request) -> web.Response:
        text = (static / "alkpubsub.js").read_text(encoding="utf-8")
        return web.Response(text=text, content_type="text/javascript")

    async def pubsub(request: web.Request) -> web.WebSocketResponse:
        # Browsers fail a handshake that selects none of the subprotocols they offered.
        ws = web.WebSocketResponse(protocols=["alkpubsub.v1"], max_msg_size=hub.max_frame_bytes)
        await ws.prepare(request)
        await hub.serve_connection(ws, request=request)
        return ws

    app = web.Application()
    app.router.add_get("/", page)
    app.router.add_get("/static/alkpubsub.js", module)
    app.router.add_get("/ws", pubsub)
    app.router.add_static("/web/", PAGE_DIR)
    return app


async def serve(host: str, port: int, step_seconds: float) -> None:
    async with WebSocketHub(serve=False) as hub:
        worker = JobWorker(hub, step_seconds)
        runner = web.AppRunner(build_app(hub), handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound: Any = runner.addresses[0]
        print(f"dashboard: http://{bound[0]}:{bound[1]}/", flush=True)
        try:
            await asyncio.Event().wait()  # until interrupted
        finally:
            for task in worker.tasks:
                task.cancel()
            await hub.aclose()  # closes the pages' connections (1001) before aiohttp stops
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--step", type=float, default=0.5, help="seconds per job step")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends the example
        asyncio.run(serve(args.host, args.port, args.step))


if __name__ == "__main__":
    main()
