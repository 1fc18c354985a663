"""The worker transport: conformance of two symmetric ends, and real child
processes: round trips, subscriptions across the pipe, exits, crashes, kills,
closing, bad input in both directions, no zombies, no leaked fds.

Every child here is a real process (``multiprocessing`` spawn, or a subprocess
the test starts itself); waits are bounded and event-driven (a pidfd tells
when a process that is not ours has exited)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from alkpubsub import create_pubsub, get_transport, make_event
from alkpubsub.core.close import CloseCode
from alkpubsub.core.codec import FrameDecoder, pack_frames
from alkpubsub.core.errors import (
    BackpressureError,
    LinkClosedError,
    TargetClosedError,
)
from alkpubsub.testing import BusHarness, CoreConformance, Recorder, WorkerBus, within
from alkpubsub.transports.worker import (
    WorkerExitedError,
    WorkerHost,
    WorkerTarget,
    worker_pair,
)

ROOT = Path(__file__).resolve().parent.parent
RAW_CHILD = ROOT / "tests" / "worker_raw_child.py"
CHILD_ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SPAWN_TIMEOUT = 60.0  # a fresh interpreter importing pydantic, on a busy 2-core machine


# -- process hygiene -------------------------------------------------------------------


def zombie_children() -> list[int]:
    """Children of this process that exited and were not reaped."""
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as file:
                stat = file.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z" and int(fields[1]) == me:
            found.append(int(entry))
    return found


def open_fds() -> set[str]:
    return {
        f"{fd} -> {os.readlink(f'/proc/self/fd/{fd}')}"
        for fd in os.listdir("/proc/self/fd")
        if os.path.exists(f"/proc/self/fd/{fd}")
    }


@pytest.fixture(autouse=True)
def no_zombies() -> Iterator[None]:
    yield
    assert zombie_children() == []


async def process_gone(pid: int, timeout: float = 20.0) -> None:
    """Wait until ``pid`` (not necessarily our child) has exited: a pidfd is
    readable from then on."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    gone = loop.create_future()
    loop.add_reader(pidfd, lambda: gone.done() or gone.set_result(None))
    try:
        await within(gone, timeout)
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            stat = file.read()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


class Reasons:
    """An ``on_disconnect`` that lets a test wait for its call."""

    def __init__(self) -> None:
        self.reasons: list[BaseException | None] = []
        self.called = asyncio.Event()

    def __call__(self, reason: BaseException | None) -> None:
        self.reasons.append(reason)
        self.called.set()

    async def first(self) -> BaseException | None:
        await within(self.called.wait(), SPAWN_TIMEOUT)
        return self.reasons[0]


async def start_host(function: str, *args: Any, **options: Any) -> tuple[WorkerHost, Recorder]:
    """A started host whose worker announced ``ready:`` (its listeners are live)."""
    host = WorkerHost(f"tests.worker_children:{function}", args=args, **options)
    ready = Recorder("ready")
    host.add_event_listener("ready:", ready)
    await within(host.start(), SPAWN_TIMEOUT)
    await ready.wait_for_count(1, SPAWN_TIMEOUT)
    return host, ready


# -- conformance: two symmetric ends ------------------------------------------------------


@pytest.fixture
def bus_harness() -> BusHarness:
    return WorkerBus()


class TestWorkerConformance(CoreConformance):
    """SPEC §1 and B1-B13 on a bus of the two ends of a worker channel."""


# -- the channel, in one process -------------------------------------------------------------


@pytest_asyncio.fixture
async def pair() -> AsyncIterator[tuple[WorkerTarget, WorkerTarget]]:
    a, b = worker_pair()
    await within(asyncio.gather(a.start(), b.start()))
    yield a, b
    await within(a.aclose())
    await within(b.aclose())


async def test_only_topics_the_peer_listens_to_cross_the_pipe(
    pair: tuple[WorkerTarget, WorkerTarget],
) -> None:
    """B2 on the wire: a dispatch crosses only if the other end subscribed;
    subscriptions are refcounted (B6) and withdrawn with the last listener."""
    a, b = pair
    first, second = Recorder("first"), Recorder("second")
    b.add_event_listener("t:1", first)
    b.add_event_listener("t:1", second)
    await within(b.flush())
    assert a.peer_topics == {"t:1"}
    a.dispatch_event(make_event("t", "2", "not listened to"))
    a.dispatch_event(make_event("t", "1", "listened to"))
    await first.wait_for_count(1)
    assert a.stats.filtered_events == 1
    assert a.stats.sent_events == 1
    assert b.stats.received_events == 1
    b.remove_event_listener("t:1", first)
    await within(b.flush())
    assert a.peer_topics == {"t:1"}
    b.remove_event_listener("t:1", second)
    await within(b.flush())
    assert a.peer_topics == set()


async def test_events_dispatched_before_start_are_sent_when_the_channel_is_up() -> None:
    """Before the channel is up the peer's interest is unknown: the outbox keeps
    every event and sends it after the handshake."""
    a, b = worker_pair()
    rec = Recorder()
    b.add_event_listener("early:1", rec)
    a.dispatch_event(make_event("early", "1", "queued"))
    a.dispatch_event(make_event("early", "2", "nobody listens"))
    try:
        await within(asyncio.gather(a.start(), b.start()))
        await rec.wait_for_count(1)
        await within(a.flush())
        assert rec.payloads == ["queued"]
        assert b.stats.received_events == 2  # both crossed; b dropped the other one
    finally:
        await within(a.aclose())
        await within(b.aclose())


async def test_closing_one_end_closes_the_other_normally(
    pair: tuple[WorkerTarget, WorkerTarget],
) -> None:
    """What was queued before aclose() still arrives; the other end closes with
    a normal close (reason None) and then refuses dispatches."""
    a, b = pair
    rec = Recorder()
    b.add_event_listener("last:1", rec)
    await within(b.flush())
    for i in range(100):
        a.dispatch_event(make_event("last", "1", i))
    await within(a.aclose())
    assert await within(b.wait_closed()) is None
    assert rec.payloads == list(range(100))
    with pytest.raises(TargetClosedError):
        b.dispatch_event(make_event("last", "1"))


async def test_a_peer_over_its_topic_limit_gets_an_error() -> None:
    errors: list[BaseException] = []
    a, b = worker_pair(max_peer_topics=2, on_error=errors.append)
    try:
        await within(asyncio.gather(a.start(), b.start()))
        for i in range(3):
            a.add_event_listener(f"many:{i}", Recorder())
        await within(a.flush())
        await within(b.flush())  # b's __error went out before b's pong
        assert b.peer_topics == {"many:0", "many:1"}
        assert b.stats.invalid_subscriptions == 1
        assert [getattr(exc, "code", None) for exc in errors] == ["too_many_topics"]
    finally:
        await within(a.aclose())
        await within(b.aclose())


# -- real child processes --------------------------------------------------------------------


async def test_round_trip_host_child_host() -> None:
    """The registry builds the host; events go host -> child -> host."""
    host = get_transport("worker-host", target="tests.worker_children:echo", kwargs={"prefix": "p"})
    assert isinstance(host, WorkerHost)
    ready, pongs = Recorder("ready"), Recorder("pongs")
    host.add_event_listener("ready:", ready)
    host.add_event_listener("pong:1", pongs)
    async with host:
        await ready.wait_for_count(1, SPAWN_TIMEOUT)
        assert ready.payloads == [host.pid]
        assert "ping:1" in host.peer_topics
        for i in range(50):
            host.dispatch_event(make_event("ping", "1", i))
        await pongs.wait_for_count(50)
        assert pongs.payloads == [["p", i] for i in range(50)]
    assert host.exit is not None
    assert host.exit.clean
    assert not pid_alive(host.exit.pid or -1)


async def test_target_may_be_the_function_itself() -> None:
    from tests.worker_children import echo

    host = WorkerHost(echo, kwargs={"prefix": "by reference"})
    pongs = Recorder()
    host.add_event_listener("pong:1", pongs)
    ready = Recorder()
    host.add_event_listener("ready:", ready)
    async with host:
        await ready.wait_for_count(1, SPAWN_TIMEOUT)
        host.dispatch_event(make_event("ping", "1", 7))
        await pongs.wait_for_count(1)
    assert pongs.payloads == [["by reference", 7]]


class Mirror:
    """Drives tests.worker_children:mirror: a remote end whose listeners the test controls."""

    def __init__(self, host: WorkerHost) -> None:
        self.host = host
        self.seq = 0

    async def command(self, **command: Any) -> dict[str, Any]:
        self.seq += 1
        ack = Recorder(f"ack {self.seq}")
        # The __subscribe goes out before the command on the same pipe.
        self.host.add_event_listener(f"ack:{self.seq}", ack)
        self.host.dispatch_event(make_event("ctl", "", {"seq": str(self.seq), **command}))
        await ack.wait_for_count(1, 30)
        self.host.remove_event_listener(f"ack:{self.seq}", ack)
        payload: dict[str, Any] = ack.payloads[0]
        return payload


@pytest_asyncio.fixture
async def mirror() -> AsyncIterator[Mirror]:
    host, _ = await start_host("mirror")
    yield Mirror(host)
    await within(host.aclose())


async def test_b1_b2_b5_across_processes(mirror: Mirror) -> None:
    """B1: a dispatch reaches the child's listener and the host's own, once each;
    B2: topics the child does not listen to never reach it; B5: after it removes
    its listener (and acknowledged after a flush) nothing more crosses."""
    host = mirror.host
    heard, local = Recorder("heard"), Recorder("local")
    host.add_event_listener("heard:job:1", heard)
    host.add_event_listener("job:1", local)
    await mirror.command(op="listen", topic="job:1")
    for i in range(3):
        host.dispatch_event(make_event("job", "2", i))  # nobody in the child listens
        host.dispatch_event(make_event("job", "1", i))
    await heard.wait_for_count(3)
    stats = await mirror.command(op="unlisten", topic="job:1")
    assert heard.payloads == [0, 1, 2]
    assert local.payloads == [0, 1, 2]
    assert host.stats.filtered_events == 3
    control_events = 2  # ctl:, the child's only other subscription, twice
    assert stats["received"] == 3 + control_events
    assert "job:1" not in host.peer_topics
    host.dispatch_event(make_event("job", "1", "after"))
    stats = await mirror.command(op="noop")
    assert stats["received"] == 3 + control_events + 1  # only the noop's ctl: arrived
    assert heard.payloads == [0, 1, 2]


async def test_b3_b13_child_floods_the_host_in_order(mirror: Mirror) -> None:
    """B13 both ways: the child publishes past its queue limit, draining; the
    host receives every event in order (B3)."""
    feed = Recorder("feed")
    mirror.host.add_event_listener("feed:1", feed)
    await within(mirror.host.flush())
    count = 6000
    await mirror.command(op="publish", type="feed", id="1", count=count, pad="x" * 300)
    await feed.wait_for_count(count, 60)
    assert [p["i"] for p in feed.payloads] == list(range(count))


async def test_b13_host_floods_the_child() -> None:
    """B13 from the host: 1.5 MB through a 32 KiB queue (dispatch raises,
    drain() waits), all received by the child, in order."""
    host, _ = await start_host("mirror", max_outgoing_bytes=32 * 1024)
    mirror = Mirror(host)
    try:
        heard = Recorder("heard")
        host.add_event_listener("heard:in:1", heard)
        await mirror.command(op="listen", topic="in:1")
        count = 5000
        pad = "y" * 300
        backpressure = 0
        for i in range(count):
            event = make_event("in", "1", {"i": i, "pad": pad})
            while True:
                try:
                    host.dispatch_event(event)
                    break
                except BackpressureError:
                    backpressure += 1
                    await within(host.drain())
        await heard.wait_for_count(count, 60)
        assert backpressure > 0
        assert [p["i"] for p in heard.payloads] == list(range(count))
    finally:
        await within(host.aclose())


async def test_child_returns_normal_close_and_last_events_arrive() -> None:
    reasons = Reasons()
    host = WorkerHost("tests.worker_children:returns", on_disconnect=reasons)
    bye = Recorder("bye")
    host.add_event_listener("bye:", bye)
    subscription = create_pubsub(host).subscribe("never", "x")
    await within(host.start(), SPAWN_TIMEOUT)
    assert await reasons.first() is None
    assert bye.payloads == ["last words"]
    assert host.exit is not None
    assert host.exit.clean
    assert host.closed
    assert [envelope async for envelope in subscription] == []  # B11: iterators end
    with pytest.raises(TargetClosedError):
        host.dispatch_event(make_event("any", "thing"))
    await within(host.aclose())


@pytest.mark.parametrize(
    ("function", "args", "code", "returncode", "reason"),
    [
        ("raises", (), 1011, 1, "worker raised ValueError: boom; exit code 1"),
        ("exits", (3,), 1011, 3, "exit code 3"),
        ("exits", (0,), 1011, 0, "it closed the channel without __close; exit code 0"),
        ("closes", (4001, "maintenance"), 4001, 0, "maintenance; exit code 0"),
        ("crashes", (), 1011, -signal.SIGSEGV, "killed by SIGSEGV"),
    ],
    ids=["raises", "sys.exit", "sys.exit(0)", "own close code", "segfault"],
)
async def test_child_that_fails_reports_exit(
    function: str, args: tuple[Any, ...], code: int, returncode: int, reason: str
) -> None:
    reasons = Reasons()
    host, _ = await start_host(function, *args, on_disconnect=reasons)
    error = await reasons.first()
    assert isinstance(error, WorkerExitedError)
    assert isinstance(error, LinkClosedError)
    assert (error.code, error.reason) == (code, reason)
    assert error.exit.returncode == returncode
    assert host.exit == error.exit
    with pytest.raises(TargetClosedError):
        host.dispatch_event(make_event("any", "thing"))
    await within(host.aclose())


async def test_child_killed_from_outside() -> None:
    reasons = Reasons()
    host, ready = await start_host("echo", on_disconnect=reasons)
    os.kill(ready.payloads[0], signal.SIGKILL)
    error = await reasons.first()
    assert isinstance(error, WorkerExitedError)
    assert (error.code, error.reason) == (CloseCode.INTERNAL_ERROR, "killed by SIGKILL")
    assert error.exit.signal == signal.SIGKILL
    assert error.exit.escalation == "none"
    with pytest.raises(TargetClosedError):
        host.dispatch_event(make_event("ping", "1"))


async def test_exit_is_watched_without_pidfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the OS has no pidfd, the process sentinel tells that it exited."""
    monkeypatch.delattr(os, "pidfd_open")
    reasons = Reasons()
    host, _ = await start_host("exits", 4, on_disconnect=reasons)
    error = await reasons.first()
    assert isinstance(error, WorkerExitedError)
    assert error.exit.returncode == 4
    assert host.exit == error.exit


async def test_host_close_cancels_a_cooperative_child(tmp_path: Path) -> None:
    """aclose(): the child sees the host's close (a normal one), its function is
    cancelled, it exits by itself with code 0."""
    record = tmp_path / "record"
    host, _ = await start_host("waits", str(record))
    await within(host.aclose(), 30)
    assert host.exit is not None
    assert host.exit.clean
    assert record.read_text() == "True NoneType None"
    assert host.disconnect_reason is None


@pytest.mark.parametrize(
    ("ignore_sigterm", "escalation", "returncode"),
    [(False, "terminated", -signal.SIGTERM), (True, "killed", -signal.SIGKILL)],
)
async def test_host_close_terminates_then_kills_a_stuck_child(
    ignore_sigterm: bool, escalation: str, returncode: int
) -> None:
    host, ready = await start_host("blocks", ignore_sigterm, close_timeout=0.5, kill_timeout=0.5)
    await within(host.aclose(), 30)
    assert host.exit is not None
    assert (host.exit.escalation, host.exit.returncode) == (escalation, returncode)
    assert host.exit.pid == ready.payloads[0]
    assert not pid_alive(ready.payloads[0])


async def test_child_sees_the_host_going_away(tmp_path: Path) -> None:
    """A host process killed with SIGKILL: its worker sees the end of the
    channel without __close, its target closes, it exits (code 1)."""
    record = tmp_path / "record"
    script = f"""
import asyncio, sys
from alkpubsub.transports.worker import WorkerHost
from alkpubsub.testing import Recorder

async def main():
    host = WorkerHost("tests.worker_children:waits", args=({str(record)!r},))
    ready = Recorder()
    host.add_event_listener("ready:", ready)
    await host.start()
    await ready.wait_for_count(1, 60)
    print(ready.payloads[0], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
    parent = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE, env=CHILD_ENV, cwd=ROOT
    )
    assert parent.stdout is not None
    try:
        worker_pid = int(await within(parent.stdout.readline(), SPAWN_TIMEOUT))
    finally:
        parent.kill()
        await within(parent.wait())
    await process_gone(worker_pid)
    assert record.read_text().startswith(
        "True ConnectionResetError the peer closed the channel without __close"
    )


async def test_a_worker_that_cannot_be_loaded_fails_start() -> None:
    host = WorkerHost("tests.worker_children:missing")
    with pytest.raises(ConnectionError, match="cannot load the worker function") as info:
        await within(host.start(), SPAWN_TIMEOUT)
    assert "AttributeError" in str(info.value)
    assert "exit code 1" in str(info.value)
    assert host.closed
    assert host.exit is not None
    assert host.exit.returncode == 1


async def test_start_cancelled_while_spawning_leaves_nothing_behind() -> None:
    """connect_timeout fires while process.start() still writes a 5 MB argument
    to the new child: the spawn is allowed to finish (the fds it passes stay
    open until then), and the child it started is stopped and reaped."""
    from multiprocessing import resource_tracker

    resource_tracker.ensure_running()  # its fd, once per process
    before = open_fds()
    host = WorkerHost("tests.worker_children:echo", args=("x" * 5_000_000,), connect_timeout=0.05)
    with pytest.raises(ConnectionError, match="did not answer within"):
        await within(host.start(), SPAWN_TIMEOUT)
    assert host.exit is not None  # a child was started, and reaped
    assert not pid_alive(host.exit.pid or -1)
    assert open_fds() == before


async def test_a_worker_function_that_is_not_async_is_refused() -> None:
    reasons = Reasons()
    host = WorkerHost("tests.worker_children:not_async", on_disconnect=reasons)
    await within(host.start(), SPAWN_TIMEOUT)
    error = await reasons.first()
    assert isinstance(error, WorkerExitedError)
    assert "is not a coroutine function" in error.reason


async def test_child_floods_then_returns_nothing_lost() -> None:
    """Everything the child dispatched before returning arrives before the close."""
    reasons = Reasons()
    host = WorkerHost("tests.worker_children:floods", args=(8000,), on_disconnect=reasons)
    flood = Recorder("flood")
    host.add_event_listener("flood:", flood)
    await within(host.start(), SPAWN_TIMEOUT)
    assert await reasons.first() is None
    assert [p["i"] for p in flood.payloads] == list(range(8000))


# -- the application's own child process -------------------------------------------------------


async def spawn_stdio_worker(function: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alkpubsub.transports.worker",
        f"tests.worker_children:{function}",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=CHILD_ENV,
        cwd=ROOT,
    )


async def test_stdio_worker_wrapped_by_from_process() -> None:
    """``python -m alkpubsub.transports.worker`` on the child's stdin/stdout;
    what the worker prints (even to fd 1) goes to stderr, not into the channel."""
    process = await spawn_stdio_worker("chatty")
    reasons = Reasons()
    host = WorkerHost.from_process(process, on_disconnect=reasons)
    ready = Recorder()
    host.add_event_listener("ready:", ready)
    await within(host.start(), SPAWN_TIMEOUT)
    assert await reasons.first() is None
    assert ready.payloads == ["after printing"]
    assert host.exit is not None
    assert host.exit.clean
    assert process.stderr is not None
    stderr = (await within(process.stderr.read())).decode()
    assert "print() from the worker" in stderr
    assert "os.write(1) from the worker" in stderr


async def test_a_program_that_only_speaks_the_framing() -> None:
    """A child written without alkpubsub (json and 4-byte lengths) subscribes,
    answers pings, and gets exactly its topic."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RAW_CHILD),
        "echo",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    host = WorkerHost.from_process(process)
    done = Recorder()
    host.add_event_listener("done:1", done)
    async with host:
        assert host.peer_topics == {"job:1"}
        host.dispatch_event(make_event("job", "2", 100))  # not sent: not subscribed
        host.dispatch_event(make_event("job", "1", 21))
        await done.wait_for_count(1)
    assert done.payloads == [{"double": 42}]
    assert process.stderr is not None
    received = [json.loads(line)["received"] for line in (await process.stderr.read()).splitlines()]
    assert "job" in received
    assert received.count("job") == 1
    assert received[-1] == "__close"


# -- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "code", "message"),
    [
        ("zero", CloseCode.PROTOCOL_ERROR, "zero-length frame"),
        ("oversized", CloseCode.MESSAGE_TOO_BIG, "frame of 2147483648 bytes"),
        ("garbage", CloseCode.MESSAGE_TOO_BIG, "frame of 1952999795 bytes"),
        ("truncated", CloseCode.PROTOCOL_ERROR, "the stream ended inside a frame"),
    ],
)
async def test_bad_bytes_from_the_child(mode: str, code: int, message: str) -> None:
    """The frames before the bad bytes (in the same read) are delivered, an
    undecodable one is dropped and counted (B10), the channel closes with the
    violation's code, announced to the child in a __close."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(RAW_CHILD),
        mode,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    reasons = Reasons()
    host = WorkerHost.from_process(process, on_disconnect=reasons)
    bad = Recorder()
    host.add_event_listener("bad:1", bad)
    await within(host.start(), SPAWN_TIMEOUT)
    error = await reasons.first()
    assert isinstance(error, WorkerExitedError)
    assert error.code == code
    assert message in error.reason
    assert error.reason.endswith("exit code 0")
    assert bad.payloads == [1, 2]
    assert host.stats.invalid_frames == 1
    assert process.stderr is not None
    received = [json.loads(line) for line in (await process.stderr.read()).splitlines()]
    if mode != "truncated":  # that child exits at once: it cannot read the answer
        assert received[-1]["received"] == "__close"
        assert received[-1]["payload"]["code"] == code


@pytest.mark.parametrize(
    ("bad_bytes", "code"),
    [(b"\x00\x00\x00\x00", 1002), (b"\xff\xff\xff\xffgarbage", 1009)],
    ids=["zero", "oversized"],
)
async def test_bad_bytes_from_the_host(bad_bytes: bytes, code: int) -> None:
    """A worker that receives bad bytes closes the channel with the violation's
    code (its last frame is a __close) and exits with code 1."""
    process = await spawn_stdio_worker("waits")
    assert process.stdin is not None
    assert process.stdout is not None
    decoder = FrameDecoder()
    received: list[dict[str, Any]] = []

    async def read_until(kind: str) -> dict[str, Any]:
        assert process.stdout is not None
        while True:
            while received:
                message = received.pop(0)
                if message["type"] == kind:
                    return message
            chunk = await process.stdout.read(65536)
            assert chunk, f"end of stream before {kind}"
            received.extend(json.loads(frame) for frame in decoder.feed(chunk))

    ping = await within(read_until("__ping"), SPAWN_TIMEOUT)
    pong = {"type": "__pong", "id": ping["id"], "payload": {}}
    process.stdin.write(pack_frames([json.dumps(pong).encode()]))
    process.stdin.write(bad_bytes)
    await process.stdin.drain()
    close = await within(read_until("__close"))
    assert close["payload"]["code"] == code
    process.stdin.close()
    assert await within(process.stdout.read()) == b""
    assert await within(process.wait()) == 1


# -- hygiene ---------------------------------------------------------------------------------------


async def test_no_fd_leaks_and_no_zombies(tmp_path: Path) -> None:
    """Start and end workers every way (returns, crash, kill, host close,
    stuck, the application's own process, an in-process pair): afterwards this
    process has the same fds and no unreaped child."""
    warm_up, _ = await start_host("echo")  # multiprocessing's resource tracker fd, once
    await within(warm_up.aclose())
    before = open_fds()

    host, _ = await start_host("echo")
    await within(host.aclose())
    reasons = Reasons()
    host, _ = await start_host("exits", 2, on_disconnect=reasons)
    await reasons.first()
    host, ready = await start_host("echo")
    os.kill(ready.payloads[0], signal.SIGKILL)
    await within(host.wait_closed(), 30)
    host, _ = await start_host("blocks", True, close_timeout=0.2, kill_timeout=0.2)
    await within(host.aclose(), 30)
    host = WorkerHost.from_process(await spawn_stdio_worker("chatty"))
    await within(host.start(), SPAWN_TIMEOUT)
    await within(host.wait_closed(), 30)
    never_started = WorkerHost.from_process(await spawn_stdio_worker("waits"))
    await within(never_started.aclose(), 30)
    a, b = worker_pair()
    await within(asyncio.gather(a.start(), b.start()))
    await within(a.aclose())
    await within(b.aclose())
    unused_a, unused_b = worker_pair()
    await within(unused_a.aclose())
    await within(unused_b.aclose())

    assert open_fds() == before
    assert zombie_children() == []
