"""Helpers of the fault suite: driver processes, fault proxies, memory readings.

Everything binds 127.0.0.1 only. Every wait is bounded; every child process is
killed and reaped by the ``children`` fixture even when a test fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

DRIVERS = Path(__file__).parent / "drivers"
OWN_NETNS_SCRIPT = 'ip link set lo up && exec "$@"'
#: Bound of every wait for a driver's report.
REPORT_TIMEOUT = 20.0


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free on 127.0.0.1 now (for a hub restarted on the same port)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rss_kib(pid: int | str = "self", field: str = "VmRSS") -> int:
    """A process's resident memory (``VmRSS``) or peak (``VmHWM``), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


class Child:
    """A driver script in its own process. It reports JSON lines on stdout
    (``{"event": ...}``) and takes JSON commands on stdin."""

    def __init__(self, name: str, proc: asyncio.subprocess.Process) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.reports: list[dict[str, Any]] = []
        self._seen: dict[str, int] = {}  # per kind: reports consumed by next()
        self._changed = asyncio.Event()
        self.stderr = bytearray()
        self._readers = [
            asyncio.ensure_future(self._read_stdout()),
            asyncio.ensure_future(self._read_stderr()),
        ]

    @classmethod
    async def start(
        cls, name: str, script: str, *args: str, own_netns: bool = False, **env: str
    ) -> Child:
        command = [sys.executable, "-u", str(DRIVERS / script), *args]
        if own_netns:
            # A network namespace of its own with only loopback (needs root,
            # as tools/loopback-only does); exec keeps the pid ours to signal.
            command = ["unshare", "--net", "--", "sh", "-c", OWN_NETNS_SCRIPT, "sh", *command]
        proc = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
            limit=64 * 1024 * 1024,  # a subscriber's report lists every sequence number
        )
        return cls(name, proc)

    async def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                report = json.loads(line)
                report.setdefault("at", None)
                self.reports.append(report)
                self._changed.set()
        self._changed.set()

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.stderr += line
            del self.stderr[: max(0, len(self.stderr) - 64 * 1024)]

    @property
    def running(self) -> bool:
        return self.proc.returncode is None

    async def next(self, event: str, timeout: float = REPORT_TIMEOUT) -> dict[str, Any]:
        """The next report of kind ``event`` not consumed yet (each kind is
        consumed in order, independently of the others)."""

        def find() -> dict[str, Any] | None:
            for index in range(self._seen.get(event, 0), len(self.reports)):
                if self.reports[index].get("event") == event:
                    self._seen[event] = index + 1
                    return self.reports[index]
            return None

        try:
            async with asyncio.timeout(timeout):
                while (report := find()) is None:
                    if self.proc.stdout is not None and self.proc.stdout.at_eof():
                        await asyncio.sleep(0)  # let the reader append its last lines
                        if (report := find()) is not None:
                            return report
                        raise AssertionError(f"{self.name} exited before reporting {event!r}")
                    self._changed.clear()
                    await self._changed.wait()
                return report
        except (TimeoutError, AssertionError) as exc:
            raise AssertionError(
                f"{self.name}: no {event!r} report within {timeout}s ({exc}); "
                f"stderr:\n{self.stderr.decode(errors='replace')[-4000:]}"
            ) from None

    def all(self, event: str) -> list[dict[str, Any]]:
        return [report for report in self.reports if report.get("event") == event]

    async def send(self, command: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": command, **fields}).encode() + b"\n")
        await asyncio.wait_for(self.proc.stdin.drain(), REPORT_TIMEOUT)

    async def ask(
        self, command: str, timeout: float = REPORT_TIMEOUT, answer: str = "", **fields: Any
    ) -> Any:
        """Send ``command`` and wait for the report it answers with (by default
        of the same name)."""
        await self.send(command, **fields)
        return await self.next(answer or command, timeout)

    def signal(self, signum: int) -> float:
        """Send ``signum``; returns ``time.monotonic()`` just before (the clock
        is system-wide, so it compares with the children's own readings)."""
        at = time.monotonic()
        os.kill(self.pid, signum)
        return at

    def kill(self) -> float:
        return self.signal(signal.SIGKILL)

    async def wait(self, timeout: float = REPORT_TIMEOUT) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await asyncio.wait_for(asyncio.gather(*self._readers, return_exceptions=True), timeout)
        return code

    async def aclose(self) -> None:
        """Kill (if still running) and reap; never raises."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
                os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 10)
        for reader in self._readers:
            reader.cancel()
        await asyncio.gather(*self._readers, return_exceptions=True)
        if self.proc.stdin is not None:
            self.proc.stdin.close()


class Children:
    """Every child of a test: killed and reaped at its end (then the
    ``cleanups`` run: temporary directories of their sockets)."""

    def __init__(self) -> None:
        self.children: list[Child] = []
        self.cleanups: list[Callable[[], None]] = []

    async def start(
        self, name: str, script: str, *args: str, own_netns: bool = False, **env: str
    ) -> Child:
        child = await Child.start(name, script, *args, own_netns=own_netns, **env)
        self.children.append(child)
        return child

    async def aclose(self) -> None:
        await asyncio.gather(*(child.aclose() for child in self.children))
        for cleanup in self.cleanups:
            cleanup()


# -- a TCP fault proxy (WebSocket) ----------------------------------------------------------


class _Pipe:
    """One proxied TCP connection: two sockets and the two copy loops."""

    def __init__(
        self,
        downstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.down_reader, self.down_writer = downstream
        self.up_reader, self.up_writer = upstream
        self.tasks: list[asyncio.Task[None]] = []

    def abort(self) -> None:
        """Reset both sides (RST, no FIN, queued bytes dropped)."""
        for writer in (self.down_writer, self.up_writer):
            writer.transport.abort()
        for task in self.tasks:
            task.cancel()


class TcpFaultProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; can delay, stall, cap the
    bandwidth of, or reset what goes through it, and hold new connections."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.delay = 0.0  # seconds added to every chunk, both ways
        self.bytes_per_second: float | None = None  # bandwidth cap, each way
        self._flowing = asyncio.Event()  # cleared: stall (nothing moves)
        self._flowing.set()
        self._admitting = asyncio.Event()  # cleared: new connections wait
        self._admitting.set()
        self.pipes: set[_Pipe] = set()
        self.resets = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, port: int = 0) -> TcpFaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def hold(self) -> None:
        """New connections wait (accepted, not forwarded) until ``admit()``."""
        self._admitting.clear()

    def admit(self) -> None:
        self._admitting.set()

    def reset_all(self) -> int:
        pipes = list(self.pipes)
        for pipe in pipes:
            pipe.abort()
        self.resets += len(pipes)
        return len(pipes)

    def reset_one(self, rng: random.Random) -> bool:
        if not self.pipes:
            return False
        rng.choice(sorted(self.pipes, key=id)).abort()
        self.resets += 1
        return True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            self.accepted += 1
            await self._admitting.wait()
            try:
                upstream = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            pipe = _Pipe((reader, writer), upstream)
            self.pipes.add(pipe)
            pipe.tasks = [
                asyncio.ensure_future(self._copy(reader, upstream[1])),
                asyncio.ensure_future(self._copy(upstream[0], writer)),
            ]
            try:
                await asyncio.wait(pipe.tasks, return_when=asyncio.FIRST_COMPLETED)
            finally:
                # One side ended (EOF or error): reset both, as a dead middlebox would.
                pipe.abort()
                await asyncio.gather(*pipe.tasks, return_exceptions=True)
                self.pipes.discard(pipe)
        except asyncio.CancelledError:
            writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _copy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(64 * 1024):
                await self._flowing.wait()
                if self.delay:
                    await asyncio.sleep(self.delay)
                if self.bytes_per_second:
                    await asyncio.sleep(len(data) / self.bytes_per_second)
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        with contextlib.suppress(Exception):
            writer.write_eof()

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset_all()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await asyncio.wait_for(self._server.wait_closed(), 5)


# -- a UDP fault proxy (Iroh) ---------------------------------------------------------------


class _Upstream(asyncio.DatagramProtocol):
    def __init__(self, proxy: UdpFaultProxy, client: tuple[str, int]) -> None:
        self.proxy = proxy
        self.client = client
        self.transport: asyncio.DatagramTransport | None = None

    def send(self, data: bytes) -> None:
        if self.transport is None:
            return  # being opened: lost, as UDP may be
        if isinstance(self.proxy.target, str):
            # Not connected: a restarted hub's relay is a new socket at the same path.
            self.transport.sendto(data, self.proxy.target)
        else:
            self.transport.sendto(data)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.proxy.to_client(data, self.client)


class UdpFaultProxy(asyncio.DatagramProtocol):
    """Forwards datagrams between spokes and an Iroh hub at ``target`` (a QUIC
    path through 127.0.0.1:``port``): one upstream socket per spoke address.
    ``blackholed`` drops everything both ways; ``rebind`` moves a spoke's
    traffic to a new upstream port (the hub sees a path change).

    ``target`` is a UDP address, or the path of a hub's Unix relay (a hub in
    a network namespace of its own, drivers/hub.py ``--relay``): iroh learns
    its peer's own addresses and moves a connection onto a direct path when
    one works, which would bypass a proxy in the same namespace."""

    def __init__(self, target: tuple[str, int] | str) -> None:
        self.target = target
        self._unix_dir = tempfile.mkdtemp(prefix="alk-udp-") if isinstance(target, str) else None
        self._clients = 0
        self.transport: asyncio.DatagramTransport | None = None
        self.upstreams: dict[tuple[str, int], _Upstream] = {}
        self.blackholed = False
        self.dropped = 0
        self.forwarded = 0
        self._pending: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, port: int = 0) -> UdpFaultProxy:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", port))
        assert self.transport is not None
        self.port = self.transport.get_extra_info("sockname")[1]
        return self

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if self.blackholed:
            self.dropped += 1
            return
        client = (str(addr[0]), int(addr[1]))
        upstream = self.upstreams.get(client)
        if upstream is None:
            upstream = self.upstreams[client] = _Upstream(self, client)
            task = asyncio.ensure_future(self._open(upstream, data))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:
            self.forwarded += 1
            upstream.send(data)

    async def _open(self, upstream: _Upstream, first: bytes) -> None:
        loop = asyncio.get_running_loop()
        if self._unix_dir is not None:
            self._clients += 1
            await loop.create_datagram_endpoint(
                lambda: upstream,
                local_addr=os.path.join(self._unix_dir, f"c{self._clients}"),
                family=socket.AF_UNIX,
            )
        else:
            await loop.create_datagram_endpoint(
                lambda: upstream, local_addr=("127.0.0.1", 0), remote_addr=self.target
            )
        upstream.send(first)

    def to_client(self, data: bytes, client: tuple[str, int]) -> None:
        if self.blackholed or self.transport is None:
            self.dropped += 1
            return
        self.forwarded += 1
        self.transport.sendto(data, client)

    def rebind(self) -> None:
        """Drop every upstream socket: the next datagrams leave from new ports."""
        upstreams, self.upstreams = self.upstreams, {}
        for upstream in upstreams.values():
            if upstream.transport is not None:
                upstream.transport.close()

    async def aclose(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await asyncio.gather(*self._pending, return_exceptions=True)
        self.rebind()
        if self.transport is not None:
            self.transport.close()
        if self._unix_dir is not None:
            shutil.rmtree(self._unix_dir, ignore_errors=True)


class LinkWatch:
    """Tells a test when an in-process hub's links end (``router.link_lost``),
    and whether their sessions were kept for a resume."""

    def __init__(self, hub: Any) -> None:
        router = hub.router
        original = router.link_lost
        self.ended: dict[str, tuple[bool, float]] = {}
        self._changed = asyncio.Event()

        def link_lost(conn: Any, normal_close: bool) -> bool:
            kept: bool = original(conn, normal_close)
            self.ended[conn.spoke_id] = (kept, time.monotonic())
            self._changed.set()
            return kept

        router.link_lost = link_lost

    async def lost(self, spoke_id: str, timeout: float = REPORT_TIMEOUT) -> bool:
        """Wait until ``spoke_id``'s link ended; True if its session was kept."""
        async with asyncio.timeout(timeout):
            while spoke_id not in self.ended:
                self._changed.clear()
                await self._changed.wait()
        return self.ended[spoke_id][0]


def dump_reports(name: str, children: list[Child]) -> None:
    """With ``ALKPUBSUB_FAULTS_DUMP=DIR``, write every report of ``children``
    to ``DIR/name.json`` (for a post-mortem of a failed run)."""
    directory = os.environ.get("ALKPUBSUB_FAULTS_DUMP")
    if directory:
        reports = {child.name: child.reports for child in children}
        Path(directory, f"{name}.json").write_text(json.dumps(reports))
        for child in children:
            Path(directory, f"{name}.{child.name}.stderr").write_bytes(child.stderr)
