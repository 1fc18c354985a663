"""Running the JavaScript spoke from pytest: Node and Chromium drivers, a static server.

A driver is one long-lived Node process (``tests/js/node_driver.mjs`` or
``tests/js/browser_driver.mjs``) that runs JS spokes for the whole test session
and speaks JSON lines over stdio. Sharing one process (and one Chromium) across
tests keeps the browser tests to a fraction of a second each. A reader thread
collects its output, so a driver outlives the per-test event loops.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import importlib.resources
import itertools
import json
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest

T = TypeVar("T")

ROOT = Path(__file__).resolve().parent.parent
JS_DIR = ROOT / "tests" / "js"
CHROMIUM = os.environ.get("ALKPUBSUB_CHROMIUM", "/usr/bin/chromium")
TIMEOUT = 15.0


def static_dir() -> Path:
    """The JS module as installed with the package (package data)."""
    return Path(str(importlib.resources.files("alkpubsub") / "static"))


def js_prerequisites(browser: bool) -> list[str]:
    problems = []
    node = shutil.which("node")
    if node is None:
        problems.append("node (>= 20) is not installed: apt-get install -y nodejs npm")
    else:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
        if int(version.lstrip("v").split(".")[0] or 0) < 20:
            problems.append(f"node {version} is too old: the JS spoke needs Node >= 20")
        for package in ("ws", "playwright-core", "typescript"):
            if not (JS_DIR / "node_modules" / package).is_dir():
                problems.append(f"{package} is missing: run `npm ci --prefix tests/js`")
    if browser and not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing: apt-get install -y chromium")
    return problems


def require_js(browser: bool) -> None:
    """Skip where node/chromium are missing; under CI that fails instead (like iroh tests)."""
    problems = js_prerequisites(browser)
    if problems:
        message = "JS spoke tests cannot run: " + "; ".join(problems)
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


class JsCommandError(Exception):
    """A driver command failed in JS; ``error`` has the JS error's name, message, code, ..."""

    def __init__(self, op: str, error: dict[str, Any]) -> None:
        super().__init__(f"{op}: {error.get('name')}: {error.get('message')}")
        self.error = error


class JsDriver:
    """One driver process and everything it reported."""

    def __init__(self, name: str, argv: list[str]) -> None:
        self.name = name
        self.process = subprocess.Popen(
            argv, cwd=JS_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self._lock = threading.Lock()
        self._replies: dict[int, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._stderr: deque[str] = deque(maxlen=100)
        self._seq = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed: asyncio.Event | None = None
        self._ended = False
        for target in (self._read_stdout, self._read_stderr):
            threading.Thread(target=target, name=f"{name}-reader", daemon=True).start()

    # -- reader threads ------------------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                self._stderr.append(f"(stdout) {raw.decode(errors='replace').rstrip()}")
                continue
            with self._lock:
                if "seq" in message:
                    self._replies[message["seq"]] = message
                else:
                    self.events.append(message)
            self._notify()
        self._ended = True
        self._notify()

    def _read_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self._stderr.append(raw.decode(errors="replace").rstrip())

    def _notify(self) -> None:
        loop, changed = self._loop, self._changed
        if loop is not None and changed is not None:
            with contextlib.suppress(RuntimeError):  # that test's loop is gone
                loop.call_soon_threadsafe(changed.set)

    # -- per test ------------------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self.events.clear()
        self._loop = loop
        self._changed = asyncio.Event()

    def detach(self) -> None:
        self._loop = self._changed = None

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr)

    async def wait_until(
        self, condition: Callable[[list[dict[str, Any]]], T | None], what: str,
        timeout: float = TIMEOUT,
    ) -> T:  # fmt: skip
        """Wait until ``condition(events)`` returns something other than None."""
        changed = self._changed
        assert changed is not None, "driver not attached to this test's loop"

        async def poll() -> T:
            while True:
                with self._lock:
                    value = condition(self.events)
                if value is not None:
                    return value
                if self._ended:
                    raise AssertionError(f"{self.name} driver exited; stderr:\n{self.stderr}")
                changed.clear()
                await changed.wait()

        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            with self._lock:
                recent = self.events[-10:]
            raise AssertionError(
                f"{self.name}: {what} not seen within {timeout}s; last events: {recent!r}; "
                f"stderr:\n{self.stderr}"
            ) from None

    async def request(self, op: str, *, timeout: float = TIMEOUT, **args: Any) -> Any:
        seq = next(self._seq)
        assert self.process.stdin is not None
        line = json.dumps({"seq": seq, "op": op, **args}) + "\n"
        try:
            self.process.stdin.write(line.encode())
            self.process.stdin.flush()
        except BrokenPipeError:
            raise AssertionError(f"{self.name} driver is gone; stderr:\n{self.stderr}") from None

        def reply(_: list[dict[str, Any]]) -> dict[str, Any] | None:
            return self._replies.pop(seq, None)

        answer = await self.wait_until(reply, f"reply to {op}", timeout)
        if not answer["ok"]:
            raise JsCommandError(op, answer["error"])
        return answer.get("result")

    # -- reading what spokes reported ------------------------------------------------------

    def reported(self, kind: str, spoke: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.get("event") == kind and (spoke is None or e.get("spoke") == spoke)
            ]

    def payloads(self, spoke: str, listener: str | None = None) -> list[Any]:
        return [
            e["envelope"]["payload"]
            for e in self.reported("message", spoke)
            if listener is None or e["listener"] == listener
        ]

    async def wait_for(
        self, kind: str, spoke: str | None = None, count: int = 1, timeout: float = TIMEOUT
    ) -> list[dict[str, Any]]:
        """The first ``count`` reports of ``kind`` (by ``spoke``), once there are that many."""

        def enough(events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            found = [
                e
                for e in events
                if e.get("event") == kind and (spoke is None or e.get("spoke") == spoke)
            ]
            return found[:count] if len(found) >= count else None

        return await self.wait_until(enough, f"{count} x {kind} of {spoke}", timeout)

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)


class _StaticHandler(http.server.SimpleHTTPRequestHandler):
    """``/static/*`` from the installed package, ``/js/*`` from tests/js (no node_modules)."""

    extensions_map: ClassVar[dict[str, str]] = {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8",
        ".ts": "text/plain; charset=utf-8",
        ".css": "text/css; charset=utf-8",
    }

    def translate_path(self, path: str) -> str:
        path = path.split("?", 1)[0].split("#", 1)[0]
        for prefix, folder in (("/static/", static_dir()), ("/js/", JS_DIR)):
            if path.startswith(prefix):
                name = path[len(prefix) :]
                if "/" not in name and not name.startswith("."):
                    return str(folder / name)
        return str(JS_DIR / "node_modules" / "does-not-exist")  # 404

    def log_message(self, format: str, *args: Any) -> None:
        return None


@contextlib.contextmanager
def static_server() -> Iterator[str]:
    """The test harness page and the JS module over HTTP on 127.0.0.1 (a free port)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StaticHandler)
    thread = threading.Thread(target=server.serve_forever, name="static-server", daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host!s}:{port}"
    finally:
        server.shutdown()
        server.server_close()


def start_driver(runtime: str, base_url: str | None = None) -> JsDriver:
    node = shutil.which("node") or "node"
    if runtime == "node":
        argv = [node, "node_driver.mjs", str(static_dir() / "alkpubsub.js")]
    else:
        assert base_url is not None
        argv = [node, "browser_driver.mjs", base_url]
    return JsDriver(runtime, argv)


class JsRuntimes:
    """The session's drivers, started on first use and stopped at the end."""

    def __init__(self) -> None:
        self._drivers: dict[str, JsDriver] = {}
        self._static: contextlib.ExitStack = contextlib.ExitStack()

    def get(self, runtime: str) -> JsDriver:
        require_js(browser=runtime == "browser")
        driver = self._drivers.get(runtime)
        if driver is None or driver.process.poll() is not None:
            base_url = None
            if runtime == "browser":
                base_url = self._static.enter_context(static_server())
            driver = self._drivers[runtime] = start_driver(runtime, base_url)
        return driver

    def stop(self) -> None:
        for driver in self._drivers.values():
            driver.stop()
        self._static.close()
