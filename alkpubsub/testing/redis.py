"""Real Redis for tests: a ``redis-server`` started on a free port, and the bus
harnesses that use it (``RedisBus``: symmetric Redis targets; ``BridgedBus``:
hubs bridged through Redis into one bus, SPEC H6).

No fake Redis: ``RedisServer`` runs the real binary (``--save '' --appendonly
no``), waits for its "Ready to accept connections" line (no polling, no sleep),
and stops it by PID (``SIGKILL`` or ``SIGTERM``). Inside the loopback-only
namespace of ``.ci/run`` the machine's own Redis is not reachable: start one.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..target import TypedEventTarget
from .harness import BusHarness, HubAndSpokesBus, IrohBus, StalledSubscriber, WebSocketBus

__all__ = [
    "BridgedBus",
    "BrokerBus",
    "RedisBus",
    "RedisServer",
    "RedisServerMissing",
    "find_redis_server",
]

READY_LINE = b"Ready to accept connections"


class RedisServerMissing(RuntimeError):
    """No ``redis-server`` binary on ``PATH`` (or ``$ALKPUBSUB_REDIS_SERVER``)."""


def find_redis_server() -> str:
    """The ``redis-server`` binary, or ``RedisServerMissing`` saying how to get one."""
    binary = os.environ.get("ALKPUBSUB_REDIS_SERVER") or shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissing(
            "redis-server is not installed (apt-get install -y redis-server); "
            "the Redis tests need a real server"
        )
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` process on 127.0.0.1 that a test owns.

    ``await start()``, ``url``, ``await kill()`` (SIGKILL by PID, as a crash),
    ``await stop()`` (SIGTERM), ``await restart()`` on the same port.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
        tls: tuple[str, str, str] | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self.binary = find_redis_server()
        self.port = port
        self.password = password
        self.args = list(args)
        #: (cert file, key file, CA file): serve TLS only (``rediss://``).
        self.tls = tls
        self.start_timeout = start_timeout
        self.process: asyncio.subprocess.Process | None = None
        self.log: deque[str] = deque(maxlen=50)
        self._drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("server not started")
        auth = f":{self.password}@" if self.password else ""
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        if self.running:
            return
        fixed_port = self.port is not None
        for _ in range(1 if fixed_port else 5):
            port = self.port if fixed_port else _free_port()
            assert port is not None
            if await self._launch(port):
                self.port = port
                return
        raise RuntimeError(f"redis-server did not start: {' | '.join(self.log)}")

    async def _launch(self, port: int) -> bool:
        if self.tls is None:
            listen = ["--port", str(port)]
        else:
            cert, key, ca = self.tls
            listen = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", cert]
            listen += ["--tls-key-file", key, "--tls-ca-cert-file", ca, "--tls-auth-clients", "no"]
        command = [
            self.binary,
            *listen,
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
        ]
        if self.password:
            command += ["--requirepass", self.password]
        command += self.args
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(self.start_timeout):
                while line := await process.stdout.readline():
                    self.log.append(line.decode(errors="replace").rstrip())
                    if READY_LINE in line:
                        break
        except TimeoutError:
            pass
        if process.returncode is None and self.log and READY_LINE.decode() in self.log[-1]:
            self.process = process
            self._drain = asyncio.ensure_future(self._drain_output(process))
            return True
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return False

    async def _drain_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            self.log.append(line.decode(errors="replace").rstrip())

    async def kill(self) -> None:
        """SIGKILL by PID: a crash, nothing flushed, every connection reset."""
        await self._signal(signal.SIGKILL)

    async def stop(self) -> None:
        """SIGTERM by PID: a clean shutdown."""
        await self._signal(signal.SIGTERM)

    async def _signal(self, sig: int) -> None:
        process = self.process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
        await process.wait()
        if self._drain is not None:
            await asyncio.gather(self._drain, return_exceptions=True)
        self.process = None

    async def restart(self, before_start: Callable[[], Awaitable[None]] | None = None) -> None:
        """Kill the server and start a new one on the same port."""
        await self.kill()
        if before_start is not None:
            await before_start()
        await self.start()

    async def client(self) -> Any:
        """A plain redis-py client on this server (a spy for tests)."""
        from redis.asyncio import Redis

        return Redis.from_url(self.url)

    async def __aenter__(self) -> RedisServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()


class BrokerBus(BusHarness):
    """A bus of symmetric targets on one broker that the harness can restart
    (``BrokerReconnectConformance``)."""

    @abc.abstractmethod
    async def restart_broker(
        self, before_start: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Stop the broker and start it again at the same address; ``before_start``
        runs while it is down."""


class RedisBus(BrokerBus):
    """``n`` symmetric ``RedisEventTarget``s on one ``redis-server`` the harness
    owns (a unique channel prefix per ``open``)."""

    name = "redis"

    def __init__(self) -> None:
        self.server: RedisServer | None = None
        self._targets: list[Any] = []

    async def ensure_server(self) -> RedisServer:
        if self.server is None:
            self.server = RedisServer()
        await self.server.start()
        return self.server

    def make_target(self, url: str, prefix: str, **options: Any) -> Any:
        from ..registry import transport_from_url

        return transport_from_url(url, prefix=prefix, **options)

    async def open(self, n: int, **options: Any) -> list[TypedEventTarget]:
        server = await self.ensure_server()
        prefix = f"t{uuid.uuid4().hex[:8]}:"
        # Hub-side options of the shared suite mean nothing here.
        options = {k.removeprefix("spoke_"): v for k, v in options.items() if k[:4] != "hub_"}
        targets = []
        for _ in range(n):
            target = self.make_target(server.url, prefix, **options)
            self._targets.append(target)
            await target.start()
            targets.append(target)
        return targets

    async def restart_broker(
        self, before_start: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        server = await self.ensure_server()
        await server.restart(before_start)

    async def aclose(self) -> None:
        for target in self._targets:
            await target.aclose()
        self._targets.clear()
        if self.server is not None:
            await self.server.kill()
            self.server = None


class BridgedBus(HubAndSpokesBus):
    """Two or three hubs (``ws``, ``iroh``, or a mix) bridged through one
    ``redis-server`` into one bus (SPEC H6), spokes spread over the hubs.

    ``targets[0]`` is the first hub; spoke ``i`` connects to hub
    ``(first_spoke_hub + i) % len(kinds)``. ``first_spoke_hub=1`` puts the
    first spoke on another hub than ``targets[0]`` (so that even two-target
    tests cross the bridge); hub-specific suites need ``0`` (their spoke must be
    on ``targets[0]``). Options prefixed ``hub_`` go to every hub.
    """

    name = "bridged"

    def __init__(
        self,
        kinds: Sequence[str] = ("ws", "ws", "ws"),
        *,
        first_spoke_hub: int = 0,
        server: RedisServer | None = None,
    ) -> None:
        super().__init__()
        if not 2 <= len(kinds) <= 8 or any(kind not in ("ws", "iroh") for kind in kinds):
            raise ValueError("kinds: two or more of 'ws' and 'iroh'")
        self.kinds = tuple(kinds)
        self.first_spoke_hub = first_spoke_hub
        self.server = server
        self._owns_server = server is None
        self.prefix = f"b{uuid.uuid4().hex[:8]}:"
        self.bus_hubs: list[Any] = []  # the hubs of the last open(), in kind order
        self._kind_of: dict[int, str] = {}

    async def ensure_server(self) -> RedisServer:
        if self.server is None:
            self.server = RedisServer()
        await self.server.start()
        return self.server

    def _single(self, kind: str) -> HubAndSpokesBus:
        return WebSocketBus() if kind == "ws" else IrohBus()

    def make_hub(self, **options: Any) -> Any:
        kind = options.pop("kind", self.kinds[0])
        assert self.server is not None
        options.setdefault("bridge", self._bridge_target())
        hub = self._single(kind).make_hub(**options)
        self._kind_of[id(hub)] = kind
        return hub

    def _bridge_target(self) -> Any:
        from ..transports.redis import RedisEventTarget

        assert self.server is not None
        return RedisEventTarget(
            self.server.url, prefix=self.prefix, backoff_initial=0.05, backoff_max=0.5
        )

    def make_spoke(self, hub: Any, **options: Any) -> Any:
        from ..registry import transport_from_url

        return transport_from_url(hub.url, **options)

    def kind_of(self, hub: Any) -> str:
        return self._kind_of[id(hub)]

    async def open(self, n: int, **options: Any) -> list[TypedEventTarget]:
        await self.ensure_server()
        hub_options = {k[4:]: v for k, v in options.items() if k.startswith("hub_")}
        spoke_options = {k[6:]: v for k, v in options.items() if k.startswith("spoke_")}
        if "on_listener_error" in options:
            hub_options["on_listener_error"] = options["on_listener_error"]
            spoke_options["on_listener_error"] = options["on_listener_error"]
        hubs = []
        for kind in self.kinds:
            hub = self.make_hub(kind=kind, **hub_options)
            self.hubs.append(hub)
            await hub.start()
            hubs.append(hub)
        self.bus_hubs = hubs
        spokes = []
        for index in range(n - 1):
            hub = hubs[(self.first_spoke_hub + index) % len(hubs)]
            spoke = self.make_spoke(hub, **spoke_options)
            self.spokes.append(spoke)
            await spoke.start()
            spokes.append(spoke)
        return [hubs[0], *spokes]

    def restart_options(self, hub: Any) -> dict[str, Any]:
        kind = self.kind_of(hub)
        return {"kind": kind, **self._single(kind).restart_options(hub)}

    async def restart_hub(self, hub: Any, before_start: Any = None) -> Any:
        replacement = await super().restart_hub(hub, before_start)
        self.bus_hubs = [replacement if h is hub else h for h in self.bus_hubs]
        return replacement

    async def stalled_subscriber(self, hub: Any, topic: str) -> StalledSubscriber:
        stalled = await self._single(self.kind_of(hub)).stalled_subscriber(hub, topic)
        await hub.flush()  # the stalled client's subscription is live on Redis too
        return stalled

    async def aclose(self) -> None:
        await super().aclose()
        if self.server is not None and self._owns_server:
            await self.server.kill()
            self.server = None
