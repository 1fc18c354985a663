"""The worker transport: one ``TypedEventTarget`` on each end of a pipe to a
child process, so that CPU-heavy work runs in another process and talks to the
program in events (the library's ``createWorkerHostEventTarget`` /
``createWorkerThreadEventTarget``; in Python the unit of parallel work is a
process).

- ``WorkerHost`` (``get_transport("worker-host", target="pkg.module:function")``)
  starts a child with the ``spawn`` start method and owns it; the child's
  bootstrap gives ``function`` its end of the channel, a started ``WorkerThread``,
  and exits when the function returns. ``WorkerHost.from_process`` wraps a child
  that the application started itself (``python -m alkpubsub.transports.worker
  pkg.module:function`` speaks the channel on its stdin/stdout).
- Both ends are symmetric (``WorkerTarget``): the sans-I/O ``PeerSession`` of
  ``alkpubsub.core.peer`` decides what crosses the pipe; this module moves bytes,
  runs the handshake and the closing sequence, and manages the child process.

Frames are the core codec's envelopes with the 4-byte length prefix of SPEC F2,
as over Iroh: a child can be any program that speaks that framing. See
``docs/worker.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import inspect
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing import reduction
from typing import Any, Final, Literal, Protocol, Self

from ..core import control
from ..core.close import NORMAL_CLOSE_CODES, CloseCode
from ..core.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode_envelope, pack_frames
from ..core.envelope import Event
from ..core.errors import (
    FramingError,
    HubRefusalError,
    LinkClosedError,
    TargetClosedError,
)
from ..core.forwarder import (
    DEFAULT_MAX_OUTGOING_BYTES,
    DEFAULT_OUTBOX_LIMIT,
    Closing,
    HubError,
    Pong,
    SpokeState,
)
from ..core.listeners import Listener, ListenerErrorHandler
from ..core.peer import DEFAULT_MAX_PEER_TOPICS, PeerEvent, PeerSession, PeerStats
from ..target import BaseEventTarget, call_user
from .link import LINK_ERRORS, WRITE_CHUNK_BYTES

__all__ = [
    "WorkerExit",
    "WorkerExitedError",
    "WorkerHost",
    "WorkerTarget",
    "WorkerThread",
    "main",
    "run_worker",
    "worker_pair",
]

logger = logging.getLogger(__name__)

#: Bytes read from the pipe at a time.
READ_CHUNK_BYTES: Final = 256 * 1024
#: Queued bytes from which ``dispatch_event`` writes at once instead of at the
#: end of the loop iteration: a publisher that loops without awaiting keeps the
#: pipe (64 KiB on Linux) fed, and the peer busy, meanwhile.
EAGER_WRITE_BYTES: Final = 64 * 1024
#: How long a side keeps reading after its peer process exited or its peer's
#: writes failed, for the frames (``__close`` above all) still in the pipe.
_GRACE_SECONDS: Final = 1.0

WorkerFunction = Callable[..., Awaitable[object]]


# -- how a child ended -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WorkerExit:
    """How a worker process ended.

    ``returncode`` follows ``subprocess``: the exit code, or ``-N`` when signal
    ``N`` ended it. ``escalation`` is what closing it took: ``"none"`` (it exited
    by itself), ``"terminated"`` (SIGTERM after ``close_timeout``) or
    ``"killed"`` (SIGKILL after another ``kill_timeout``).
    """

    pid: int | None
    returncode: int
    escalation: Literal["none", "terminated", "killed"] = "none"

    @property
    def signal(self) -> int | None:
        return -self.returncode if self.returncode < 0 else None

    @property
    def clean(self) -> bool:
        """Exited with code 0 by itself."""
        return self.returncode == 0 and self.escalation == "none"

    def __str__(self) -> str:
        number = self.signal
        if number is None:
            text = f"exit code {self.returncode}"
        else:
            try:
                name = signal.Signals(number).name
            except ValueError:
                name = f"signal {number}"
            text = f"killed by {name}"
        if self.escalation == "terminated":
            text += " (the host sent SIGTERM after close_timeout)"
        elif self.escalation == "killed":
            text += " (the host sent SIGKILL after close_timeout and kill_timeout)"
        return text


class WorkerExitedError(LinkClosedError):
    """The worker's channel ended abnormally; ``exit`` says how its process ended.

    ``code`` is the close code the child announced (``__close``), the code of a
    framing violation in what it wrote (1002, 1009), or 1011 when it went away
    without closing the channel (a crash, ``sys.exit``, a signal). ``reason``
    names the cause and the exit (``"exit code 3"``, ``"killed by SIGKILL"``).
    """

    def __init__(self, code: int, reason: str, exit: WorkerExit) -> None:
        super().__init__(code, reason)
        self.exit = exit


# -- moving bytes ----------------------------------------------------------------------


class _Sink(Protocol):
    """The writing half of a channel: writes never block; ``writable_now()``
    is False while the pipe is flow-controlled (``wait_writable()`` waits)."""

    def writable_now(self) -> bool: ...

    def write(self, data: bytes) -> None: ...

    async def wait_writable(self) -> None: ...

    async def aclose(self, timeout: float) -> None: ...


class _PipeWriteProtocol(asyncio.BaseProtocol):
    """Flow control and loss of a write pipe transport (what asyncio's
    ``StreamWriter`` takes from its protocol, with public API only)."""

    def __init__(self, on_lost: Callable[[BaseException | None], None]) -> None:
        self.paused = False
        self.lost = False
        self.closing = False  # we are closing it: its loss is no news
        self._on_lost = on_lost
        self._waiters: list[asyncio.Future[None]] = []
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.closing:
            self._on_lost(exc)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_resumed(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        await waiter


class _PipeSink:
    def __init__(self, transport: asyncio.WriteTransport, protocol: _PipeWriteProtocol) -> None:
        self.transport = transport
        self.protocol = protocol

    def writable_now(self) -> bool:
        return not self.protocol.paused

    def write(self, data: bytes) -> None:
        if self.protocol.lost or self.transport.is_closing():
            raise ConnectionResetError("the pipe to the peer is closed")
        self.transport.write(data)

    async def wait_writable(self) -> None:
        while self.protocol.paused and not self.protocol.lost:
            await self.protocol.wait_resumed()

    async def aclose(self, timeout: float) -> None:
        # close() writes what is buffered, then closes the fd (the peer's EOF).
        self.protocol.closing = True
        self.transport.close()
        try:
            async with asyncio.timeout(timeout):
                await asyncio.shield(self.protocol.closed)
        except TimeoutError:
            self.transport.abort()


class _StreamSink:
    """An application's ``asyncio.StreamWriter`` (e.g. ``process.stdin``)."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._high_water = writer.transport.get_write_buffer_limits()[1]

    def writable_now(self) -> bool:
        return self.writer.transport.get_write_buffer_size() <= self._high_water

    def write(self, data: bytes) -> None:
        if self.writer.is_closing():
            raise ConnectionResetError("the stream to the peer is closed")
        self.writer.write(data)

    async def wait_writable(self) -> None:
        await self.writer.drain()

    async def aclose(self, timeout: float) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(timeout):
                await self.writer.wait_closed()
        except TimeoutError:
            self.writer.transport.abort()
        except Exception:  # the peer is gone already: nothing left to flush
            logger.debug("closing the worker stream", exc_info=True)


class _Receiver(Protocol):
    """What reads report to: the target."""

    def _on_data(self, data: bytes) -> None: ...

    def _on_eof(self) -> None: ...

    def _on_read_lost(self, exc: BaseException | None) -> None: ...

    def _on_write_lost(self, exc: BaseException | None) -> None: ...


class _ReadProtocol(asyncio.Protocol):
    """Received bytes go straight to the target, in the loop's callback: no
    reader task, no stream buffer between the pipe and the frame decoder."""

    def __init__(self, receiver: _Receiver) -> None:
        self.receiver = receiver

    def data_received(self, data: bytes) -> None:
        self.receiver._on_data(data)

    def eof_received(self) -> bool | None:
        self.receiver._on_eof()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver._on_read_lost(exc)


@dataclass(slots=True)
class _Pipes:
    """An open channel: where to write, and how to stop reading."""

    sink: _Sink
    stop_reading: Callable[[], None]


async def _pipes_from_fds(receiver: _Receiver, read_fd: int, write_fd: int) -> _Pipes:
    """Connect two pipe fds to the loop; the transports own (and close) them."""
    loop = asyncio.get_running_loop()
    # File objects of the fds (no I/O): the pipe transports own them.
    read_file = os.fdopen(read_fd, "rb", buffering=0)
    try:
        write_file = os.fdopen(write_fd, "wb", buffering=0)
    except BaseException:
        read_file.close()
        raise
    try:
        write_transport, protocol = await loop.connect_write_pipe(
            lambda: _PipeWriteProtocol(receiver._on_write_lost), write_file
        )
    except BaseException:
        read_file.close()
        write_file.close()
        raise
    try:
        read_transport, _ = await loop.connect_read_pipe(lambda: _ReadProtocol(receiver), read_file)
    except BaseException:
        read_file.close()
        write_transport.close()
        raise
    return _Pipes(_PipeSink(write_transport, protocol), read_transport.close)


def _pipes_from_streams(
    receiver: _Receiver, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> _Pipes:
    """An application's streams: a task pumps the reader into the target."""

    async def pump() -> None:
        try:
            while chunk := await reader.read(READ_CHUNK_BYTES):
                receiver._on_data(chunk)
            receiver._on_eof()
        except Exception as exc:
            receiver._on_read_lost(exc)
        else:
            receiver._on_read_lost(None)

    task = asyncio.get_running_loop().create_task(pump())

    def stop_reading() -> None:
        task.cancel()

    return _Pipes(_StreamSink(writer), stop_reading)


# -- child processes --------------------------------------------------------------------


class _Child(Protocol):
    """A worker process as the host manages it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def returncode(self) -> int | None: ...

    def exited(self) -> asyncio.Future[None]:
        """Resolved once the process has exited and been reaped."""

    def terminate(self) -> None: ...

    def kill(self) -> None: ...

    def release(self) -> None:
        """Free what watching the process took (fds); after it exited."""


class _SpawnedChild:
    """A ``multiprocessing`` process started by ``WorkerHost``.

    Its exit is watched without a thread: a pidfd where the OS has them (Linux),
    else the process's sentinel; either is readable once the process ended.
    A pidfd is exact even when grandchildren inherited the sentinel.
    """

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self.process = process
        self._pid = process.pid  # process.pid raises once the process is closed
        self._future: asyncio.Future[None] | None = None
        self._fd: int | None = None
        self._owns_fd = False
        self._closed = False
        self._returncode: int | None = None

    @property
    def pid(self) -> int | None:
        return self._pid

    @property
    def returncode(self) -> int | None:
        if self._closed:
            return self._returncode
        return self.process.exitcode  # waitpid(WNOHANG): reaps when it can

    def exited(self) -> asyncio.Future[None]:
        if self._future is None:
            loop = asyncio.get_running_loop()
            self._future = loop.create_future()
            if self.returncode is not None:
                self._future.set_result(None)
                return self._future
            pid = self._pid
            fd: int | None = None
            if hasattr(os, "pidfd_open") and pid is not None:
                with contextlib.suppress(OSError):
                    fd = os.pidfd_open(pid)
                    self._owns_fd = True
            if fd is None:
                fd = self.process.sentinel
            self._fd = fd
            loop.add_reader(fd, self._readable)
        return self._future

    def _readable(self) -> None:
        future = self._future
        if self.returncode is None:
            # The sentinel closes while the process exits, a moment before
            # waitpid can reap it; a pidfd never gets here.
            asyncio.get_running_loop().call_later(0.001, self._readable)
            self._stop_watching()
            return
        self._stop_watching()
        if future is not None and not future.done():
            future.set_result(None)

    def _stop_watching(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            if self._owns_fd:
                os.close(self._fd)
            self._fd = None
            self._owns_fd = False

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def release(self) -> None:
        self._stop_watching()
        if self._future is not None and not self._future.done():
            self._future.cancel()
        returncode = self.returncode
        if returncode is not None and not self._closed:
            self.process.join()  # reaped already: drops it from multiprocessing's children
            self.process.close()  # its sentinel fd
            self._closed, self._returncode = True, returncode


class _AsyncioChild:
    """An ``asyncio.subprocess.Process`` the application started."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self._future: asyncio.Future[None] | None = None
        self._wait: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def exited(self) -> asyncio.Future[None]:
        if self._future is None:
            loop = asyncio.get_running_loop()
            future = self._future = loop.create_future()
            self._wait = loop.create_task(self.process.wait())

            def done(task: asyncio.Task[int]) -> None:
                if not future.done():
                    future.set_result(None)

            self._wait.add_done_callback(done)
        return self._future

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def release(self) -> None:
        if self._wait is not None and not self._wait.done():
            self._wait.cancel()


class _PassFd:
    """A pipe fd handed to a spawned child (``multiprocessing``'s own way of
    passing fds: the spawning Popen keeps them open across exec)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, ...]:
        return (_received_fd, (reduction.DupFd(self.fd),))


def _received_fd(dup: Any) -> int:
    fd: int = dup.detach()
    return fd


# -- the target -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Cause:
    """Why and how a channel is being closed."""

    by_user: bool
    #: Write what is queued and a ``__close`` with code/reason before closing.
    announce: bool
    code: int = CloseCode.NORMAL
    reason: str = ""
    #: What ended the channel: a read/write error, or None.
    error: BaseException | None = None


class WorkerTarget(BaseEventTarget):
    """One end of a worker channel: a ``TypedEventTarget`` whose peer is the
    target at the other end of a pair of pipes.

    ``dispatch_event`` calls this end's listeners (once, locally) and sends the
    event to the peer only if the peer listens to its topic (B1, B2); the peer's
    listeners' topics arrive as refcounted ``__subscribe``/``__unsubscribe``
    (B6). ``flush()`` is a ``__ping``/``__pong`` round trip with the peer (B4),
    ``drain()`` waits for the outgoing queue (B13). A channel is never reopened:
    when it ends, for any reason, the target closes and ``on_disconnect`` gets
    the reason (``None`` for a normal close).

    ``start()`` opens the channel and returns after a round trip with the peer
    (bounded by ``connect_timeout``). Build one with ``from_fds``,
    ``from_streams`` or ``worker_pair``; ``WorkerHost`` starts a child for you.

    I/O: received bytes are decoded and dispatched in the event loop's
    callback (no reader task). The first output of a loop iteration is written
    at once, what follows in the same iteration at its end in one write (or at
    once from 64 KiB), and answers at once after each received chunk; a task
    waits only while the pipe is flow-controlled.
    """

    transport_name = "worker"

    def __init__(
        self,
        *,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        max_outgoing_bytes: int = DEFAULT_MAX_OUTGOING_BYTES,
        outbox_limit: int = DEFAULT_OUTBOX_LIMIT,
        max_peer_topics: int = DEFAULT_MAX_PEER_TOPICS,
        connect_timeout: float = 30.0,
        close_timeout: float = 5.0,
        on_disconnect: Callable[[BaseException | None], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        on_listener_error: ListenerErrorHandler | None = None,
    ) -> None:
        super().__init__()
        if connect_timeout <= 0 or close_timeout <= 0:
            raise ValueError("connect_timeout and close_timeout must be positive")
        self._session = PeerSession(
            max_frame_bytes=max_frame_bytes,
            max_outgoing_bytes=max_outgoing_bytes,
            outbox_limit=outbox_limit,
            max_peer_topics=max_peer_topics,
            on_listener_error=on_listener_error,
            schedule=self._scheduler,
        )
        self._decoder = FrameDecoder(max_frame_bytes)
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._on_disconnect = on_disconnect
        self._on_error = on_error
        self._connector: Callable[[_Receiver], Awaitable[_Pipes]] | None = None
        self._discard: Callable[[], None] | None = None  # frees an unused connector
        self._pipes: _Pipes | None = None
        self._child: _Child | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._flush_scheduled = False
        self._wrote_now = False  # this loop iteration's first output went out at once
        self._waiting_writable: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._ended = asyncio.Event()
        #: Resolved with why the channel ended (None: end of stream or the peer's __close).
        self._channel_end: asyncio.Future[BaseException | None] | None = None
        self._read_done: asyncio.Future[None] | None = None
        self._write_lost = False
        self._eof = False  # the peer's end of stream, at a frame boundary
        self._ping_waiters: dict[str, asyncio.Future[bool]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None
        self._announced: Closing | None = None
        self._running = False  # the peer answered the handshake
        self._handshake: str | None = None  # the nonce of the handshake's ping
        self._reported_bugs: set[type[BaseException]] = set()
        #: Why the channel ended (None: normal close, by either side, or still open).
        self.disconnect_reason: BaseException | None = None
        #: How the worker process ended (hosts only; None until it did).
        self.exit: WorkerExit | None = None

    # -- construction -----------------------------------------------------------------

    @classmethod
    def from_fds(cls, read_fd: int, write_fd: int, **options: Any) -> Self:
        """An end over two pipe fds, which it owns from now on (closed with it)."""
        target = cls(**options)
        target._set_fds(read_fd, write_fd)
        return target

    @classmethod
    def from_streams(
        cls, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, **options: Any
    ) -> Self:
        """An end over an application's streams (e.g. a subprocess's pipes);
        closing the target closes ``writer``."""
        target = cls(**options)
        target._set_streams(reader, writer)
        return target

    def _set_fds(self, read_fd: int, write_fd: int) -> None:
        fds = [read_fd, write_fd]

        async def connect(receiver: _Receiver) -> _Pipes:
            read, write = fds
            fds.clear()
            return await _pipes_from_fds(receiver, read, write)

        def discard() -> None:
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)
            fds.clear()

        self._connector, self._discard = connect, discard

    def _set_streams(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def connect(receiver: _Receiver) -> _Pipes:
            return _pipes_from_streams(receiver, reader, writer)

        self._connector, self._discard = connect, writer.close

    async def _connect(self) -> _Pipes:
        if self._connector is None:
            raise RuntimeError(
                f"{type(self).__name__} has no channel: use from_fds or from_streams"
            )
        return await self._connector(self)

    # -- observability ----------------------------------------------------------------

    @property
    def state(self) -> SpokeState:
        return self._session.state

    @property
    def connected(self) -> bool:
        """The peer answered the handshake and the channel has not ended."""
        return self._running and not self._closed

    @property
    def stats(self) -> PeerStats:
        return self._session.stats

    @property
    def max_frame_bytes(self) -> int:
        return self._session.max_frame_bytes

    @property
    def peer_topics(self) -> frozenset[str]:
        """Topics the peer listens to: what ``dispatch_event`` sends it."""
        return frozenset(self._session.peer_topics)

    @property
    def listener_errors(self) -> int:
        return self._session.registry.listener_errors

    def listener_count(self, topic: str) -> int:
        return self._session.registry.count(topic)

    async def wait_closed(self) -> BaseException | None:
        """Wait until the channel has ended and everything is released (the
        child reaped); returns ``disconnect_reason``."""
        await self._ended.wait()
        return self.disconnect_reason

    # -- TypedEventTarget -------------------------------------------------------------

    def add_event_listener(self, topic: str, listener: Listener | None) -> None:
        if self._closed:
            return
        self._session.add_listener(topic, listener)
        self._kick()

    def remove_event_listener(self, topic: str, listener: Listener | None) -> None:
        if self._closed:
            return
        self._session.remove_listener(topic, listener)
        self._kick()

    def dispatch_event(self, event: Event) -> bool:
        if self._closed:
            raise TargetClosedError("target is closed")
        session = self._session
        result = session.dispatch(event)
        if session.queued_bytes >= EAGER_WRITE_BYTES and self._waiting_writable is None:
            self._flush()  # never blocks: a non-blocking write of what the pipe takes
        else:
            self._kick()
        return result

    def _kick(self) -> None:
        """Output for the peer was queued: the first of a loop iteration is
        written at once (latency), what follows in the same iteration at its end,
        in one write (throughput)."""
        session = self._session
        if not session.wants_write or self._loop is None:
            return
        session.clear_wants_write()
        if not self._wrote_now:
            self._wrote_now = True
            self._loop.call_soon(self._next_iteration)
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _next_iteration(self) -> None:
        self._wrote_now = False

    async def flush(self, timeout: float | None = None) -> None:
        """Return once the peer processed everything this end sent before (B4)."""
        if self._closed:
            return
        async with asyncio.timeout(timeout):
            while not self._closed:
                if self._session.state is not SpokeState.OPEN:
                    await self._state_changed.wait()
                elif await self._ping():
                    return

    async def _ping(self, handshake: bool = False) -> bool:
        """One ``__ping``/``__pong`` round trip; False when the channel ended first."""
        nonce = self._session.new_ping()
        if nonce is None:
            return False
        if handshake:
            self._handshake = nonce
        self._kick()
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._ping_waiters[nonce] = waiter
        try:
            return await waiter
        finally:
            self._ping_waiters.pop(nonce, None)

    async def drain(self) -> None:
        """Wait until the outgoing queue is back under its low-water mark (B13)."""
        while not self._session.drained():
            if self._closed:
                raise TargetClosedError("target is closed")
            self._drained.clear()
            await self._drained.wait()

    def _changed(self) -> None:
        self._state_changed.set()
        self._state_changed = asyncio.Event()

    # -- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel and complete a round trip with the peer (its
        ``__hello`` and subscriptions, then the answer to our ``__ping``)."""
        if self._started:
            return
        if self._closed:
            raise TargetClosedError("target is closed")
        self._started = True
        loop = self._loop = asyncio.get_running_loop()
        self._channel_end = loop.create_future()
        self._read_done = loop.create_future()
        # Up from now: what arrives is answered, what is dispatched is queued
        # (unfiltered until the peer declares its interest) and written once
        # the pipes are connected.
        self._session.connection_made()
        self._changed()
        try:
            async with asyncio.timeout(self.connect_timeout):
                self._pipes = await self._connect()
                self._supervisor = loop.create_task(self._supervise())
                self._flush()
                if not await self._ping(handshake=True):
                    await self._ended.wait()  # for the reason, with the exit code
        except TimeoutError:
            await self.aclose()
            raise ConnectionError(
                f"the worker did not answer within connect_timeout={self.connect_timeout}s"
            ) from None
        except BaseException:
            await self.aclose()
            raise
        if not self._running:
            reason = self.disconnect_reason
            raise ConnectionError(
                f"the worker ended before it answered: {reason or 'it closed the channel'}"
            ) from reason
        # The peer may have answered and closed since: then the target is closed
        # already and on_disconnect got the reason.

    async def aclose(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the channel: write what is queued and a ``__close`` with
        ``code``/``reason``, close this end, and (host) wait for the child to exit
        within ``close_timeout``, then terminate it, then kill it. Idempotent."""
        self._begin_shutdown(_Cause(by_user=True, announce=True, code=code, reason=reason))
        shutdown = self._shutdown
        if shutdown is not None:
            await asyncio.shield(shutdown)

    # -- writing ----------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what is queued, as far as the pipe takes it without blocking."""
        self._flush_scheduled = False
        pipes = self._pipes
        if pipes is None or self._closed:
            return
        session = self._session
        session.clear_wants_write()
        sink = pipes.sink
        try:
            while sink.writable_now():
                frames = session.take_outgoing(WRITE_CHUNK_BYTES)
                if not frames:
                    break
                sink.write(pack_frames(frames))
        except LINK_ERRORS as exc:
            self._end_channel(exc)
            return
        if session.has_output() and self._waiting_writable is None and self._loop is not None:
            self._waiting_writable = self._loop.create_task(self._flush_when_writable(sink))
        if session.drained():
            self._drained.set()

    async def _flush_when_writable(self, sink: _Sink) -> None:
        try:
            await sink.wait_writable()
        except LINK_ERRORS as exc:
            self._end_channel(exc)
            return
        finally:
            self._waiting_writable = None
        self._flush()

    # -- reading ----------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        if self._announced is not None:
            return  # the peer's __close was its last frame
        try:
            frames = self._decoder.feed(data)
        except FramingError as exc:
            self._deliver(exc.frames)  # they were received intact
            self._end_channel(exc)
            return
        self._deliver(frames)

    def _deliver(self, frames: list[bytes]) -> None:
        session = self._session
        receive = session.receive
        try:
            for frame in frames:
                event = receive(frame)
                if event is not None and self._handle(event):
                    break
        except Exception as exc:  # a bug: listeners' errors never get here (B9)
            self._end_channel(exc)
            return
        if session.wants_write or self._flush_scheduled:
            # Answers (pongs) and what listeners dispatched leave at once.
            session.clear_wants_write()
            self._flush()

    def _on_eof(self) -> None:
        decoder = self._decoder
        if not decoder.at_frame_boundary():
            self._end_channel(
                FramingError(
                    f"the stream ended inside a frame ({decoder.buffered} bytes of it received)",
                    close_code=CloseCode.PROTOCOL_ERROR,
                )
            )
        else:
            self._eof = True
            self._end_channel(None)

    def _on_read_lost(self, exc: BaseException | None) -> None:
        self._end_channel(exc)
        if self._read_done is not None and not self._read_done.done():
            self._read_done.set_result(None)

    def _on_write_lost(self, exc: BaseException | None) -> None:
        self._write_lost = True
        self._end_channel(exc or ConnectionResetError("the peer closed its end of the pipe"))

    def _end_channel(self, reason: BaseException | None) -> None:
        end = self._channel_end
        if end is not None and not end.done():
            end.set_result(reason)

    def _handle(self, event: PeerEvent) -> bool:
        """Act on a control event; True when the peer announced its close."""
        if isinstance(event, Pong):
            if event.nonce == self._handshake:
                # Now, not when start() resumes: frames after the pong (even the
                # peer's __close) may be handled before it does.
                self._running = True
            waiter = self._ping_waiters.get(event.nonce)
            if waiter is not None and not waiter.done():
                waiter.set_result(True)
        elif isinstance(event, HubError):
            self._report(HubRefusalError(event.code, event.message, event.topic))
        elif isinstance(event, Closing):
            self._announced = event
            self._end_channel(None)
            return True
        return False

    # -- closing ----------------------------------------------------------------------

    async def _supervise(self) -> None:
        """Wait for the channel to end (or the child to exit), then close."""
        end, read_done = self._channel_end, self._read_done
        assert end is not None
        assert read_done is not None
        watched: set[asyncio.Future[Any]] = {end}
        if self._child is not None:
            watched.add(self._child.exited())
        await asyncio.wait(watched, return_when=asyncio.FIRST_COMPLETED)
        if not end.done() or (self._write_lost and not read_done.done()):
            # The child exited, or stopped reading: what it wrote last (its
            # __close above all) may still be in the pipe.
            grace: set[asyncio.Future[Any]] = {end, read_done}
            await asyncio.wait(grace, timeout=_GRACE_SECONDS)
        error = end.result() if end.done() else None
        if self._write_lost and self._eof:
            error = None  # the peer closed both ends: its end of stream says it best
        if self._announced is not None or (error is None and end.done()):
            # The peer closed (announced, or end of stream): no __close back.
            cause = _Cause(by_user=False, announce=False)
        elif isinstance(error, FramingError):
            cause = _Cause(False, True, error.close_code, str(error), error)
        elif error is not None and not isinstance(error, LINK_ERRORS):
            self._report(error)
            cause = _Cause(False, True, CloseCode.INTERNAL_ERROR, "internal error", error)
        else:
            cause = _Cause(by_user=False, announce=False, error=error)
        self._begin_shutdown(cause)

    def _begin_shutdown(self, cause: _Cause) -> None:
        """Close at once (nothing more is accepted or delivered), then release
        the channel in a task that ``aclose()`` awaits."""
        if self._shutdown is not None:
            return
        self._mark_closed()
        session = self._session
        pipes = self._pipes
        if pipes is not None and cause.announce:
            frames = session.take_outgoing()
            frames.append(session.close_frame(cause.code, cause.reason))
            with contextlib.suppress(*LINK_ERRORS):
                pipes.sink.write(pack_frames(frames))  # flushed by the sink's close
        session.close()
        self._resolve_pings(False)
        self._drained.set()
        self._changed()
        self._shutdown = asyncio.get_running_loop().create_task(self._close_channel(cause))

    async def _close_channel(self, cause: _Cause) -> None:
        pipes = self._pipes
        try:
            await _cancel(self._waiting_writable)
            if pipes is None:
                if self._discard is not None:
                    self._discard()
            else:
                await pipes.sink.aclose(self.close_timeout)
            exit = await self._stop_child()
            read_done = self._read_done
            if pipes is not None and read_done is not None and not read_done.done():
                # Hosts: the child has exited, its end is closed or about to be.
                # Others: wait for the peer to answer our __close with its EOF,
                # so that it reads the __close before it sees a broken pipe.
                await asyncio.wait({read_done}, timeout=self.close_timeout)
            if pipes is not None:
                pipes.stop_reading()
            if self._supervisor is not None:
                await _cancel(self._supervisor)
            self.exit = exit
            if exit is not None and exit.escalation != "none":
                logger.warning("worker process %s: %s", exit.pid, exit)
            if not cause.by_user:
                self.disconnect_reason = self._reason(cause, exit)
        finally:
            self._ended.set()
        if not cause.by_user and self._running:
            call_user(self._on_disconnect, self.disconnect_reason, log=logger)

    async def _stop_child(self) -> WorkerExit | None:
        """Hosts: wait for the child to exit, then SIGTERM, then SIGKILL; reap it."""
        return None

    def _reason(self, cause: _Cause, exit: WorkerExit | None) -> BaseException | None:
        """What ``on_disconnect`` receives when the channel ended by itself."""
        announced = self._announced
        error = cause.error
        if announced is not None:
            if announced.code in NORMAL_CLOSE_CODES and (exit is None or exit.clean):
                return None
            code = (
                announced.code
                if announced.code not in NORMAL_CLOSE_CODES
                else CloseCode.INTERNAL_ERROR
            )
            text = announced.reason
        elif cause.announce:  # we closed it: a framing violation or a bug here
            code, text = cause.code, cause.reason
        elif exit is None:
            return error or ConnectionResetError("the peer closed the channel without __close")
        else:
            code = CloseCode.INTERNAL_ERROR
            text = "" if exit.returncode else "it closed the channel without __close"
        if exit is None:
            return LinkClosedError(code, text)
        return WorkerExitedError(code, "; ".join(part for part in (text, str(exit)) if part), exit)

    def _resolve_pings(self, value: bool) -> None:
        for waiter in self._ping_waiters.values():
            if not waiter.done():
                waiter.set_result(value)
        self._ping_waiters.clear()

    def _report(self, exc: BaseException) -> None:
        """Refusals go to ``on_error``; bugs are logged once per type with their
        traceback, then passed to ``on_error``."""
        if not isinstance(exc, HubRefusalError) and type(exc) not in self._reported_bugs:
            self._reported_bugs.add(type(exc))
            logger.error("unexpected error in a worker channel", exc_info=exc)
        call_user(self._on_error, exc, log=logger)


async def _cancel(task: asyncio.Task[Any] | None) -> None:
    if task is not None and not task.done():
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class WorkerThread(WorkerTarget):
    """The worker's end of the channel (the library's Thread side). The child
    bootstrap creates and starts it and passes it to the worker function."""

    transport_name = "worker-thread"

    @classmethod
    def from_stdio(cls, **options: Any) -> Self:
        """Use this process's stdin/stdout as the channel, for a child started
        with its pipes by the application's own tooling.

        The channel moves to new fds, and fd 1 becomes a copy of stderr, so that
        ``print()`` (or a C library writing to fd 1) cannot corrupt the frames;
        stdin becomes ``/dev/null``.
        """
        return cls.from_fds(*_take_stdio(), **options)


class WorkerHost(WorkerTarget):
    """The end that owns the worker process (the library's Host side).

    ``WorkerHost("pkg.module:function", args=(...), kwargs={...})`` (or
    ``get_transport("worker-host", target=...)``) starts a child with the
    ``spawn`` start method of ``multiprocessing``: a fresh interpreter, on every
    platform, where ``function(thread, *args, **kwargs)`` is awaited with the
    child's started ``WorkerThread``; the child exits when it returns.
    ``target`` may be the function itself (pickled by reference, as
    ``multiprocessing`` does); ``args``/``kwargs`` are pickled.
    ``worker_options`` go to the child's ``WorkerThread`` (by default it gets
    this end's ``max_frame_bytes``, ``max_outgoing_bytes`` and ``outbox_limit``).

    The channel uses two dedicated pipes (not the child's stdin/stdout, which it
    shares with this process), passed as ``multiprocessing`` passes fds: POSIX
    only (Linux, macOS).
    """

    transport_name = "worker-host"

    def __init__(
        self,
        target: str | WorkerFunction | None = None,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        worker_options: Mapping[str, Any] | None = None,
        kill_timeout: float = 1.0,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        if kill_timeout <= 0:
            raise ValueError("kill_timeout must be positive")
        if target is not None and not isinstance(target, str) and not callable(target):
            raise TypeError("target must be 'pkg.module:function' or a coroutine function")
        self.target = target
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        session = self._session
        self.worker_options: dict[str, Any] = {
            "max_frame_bytes": session.max_frame_bytes,
            "max_outgoing_bytes": session.forwarder.max_outgoing_bytes,
            "outbox_limit": session.forwarder.outbox_limit,
            **(worker_options or {}),
        }
        self.kill_timeout = kill_timeout

    @classmethod
    def from_process(cls, process: asyncio.subprocess.Process, **options: Any) -> WorkerHost:
        """Wrap a child the application started with ``stdin=PIPE,
        stdout=PIPE``, e.g. ``python -m alkpubsub.transports.worker
        pkg.module:function``, or any program that speaks the framing on its
        stdin/stdout. The host then manages it like its own: closing, exit
        codes, terminate and kill."""
        if process.stdin is None or process.stdout is None:
            raise ValueError("the process needs stdin=PIPE and stdout=PIPE")
        host = cls(**options)
        host._set_streams(process.stdout, process.stdin)
        host._child = _AsyncioChild(process)
        return host

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    async def _connect(self) -> _Pipes:
        if self._connector is not None:
            return await super()._connect()
        if self.target is None:
            raise ValueError("WorkerHost needs a target ('pkg.module:function' or a function)")
        if sys.platform == "win32":
            raise NotImplementedError("the worker transport needs POSIX pipes (Linux, macOS)")
        context = multiprocessing.get_context("spawn")
        to_child_read, to_child_write = os.pipe()
        from_child_read, from_child_write = os.pipe()
        name = self.target if isinstance(self.target, str) else _qualified_name(self.target)
        process = context.Process(
            target=_child_main,
            args=(
                self.target,
                self.args,
                self.kwargs,
                _PassFd(to_child_read),
                _PassFd(from_child_write),
                self.worker_options,
            ),
            name=f"alkpubsub-worker[{name}]",
        )
        # Spawning (a fork/exec, then writing the pickled process to the child)
        # blocks for milliseconds, longer with large arguments: off the loop.
        starting = asyncio.ensure_future(asyncio.to_thread(process.start))
        try:
            await asyncio.shield(starting)
        except BaseException:
            # Cancelled, or start() failed: its thread may still be passing the
            # fds to a new child. Let it finish; a child it started is stopped
            # and reaped by aclose().
            while not starting.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.wait({starting})
            for fd in (to_child_write, from_child_read):
                os.close(fd)
            if process.pid is not None:
                self._child = _SpawnedChild(process)
            raise
        finally:
            if starting.done():
                os.close(to_child_read)
                os.close(from_child_write)
        self._child = _SpawnedChild(process)
        try:
            return await _pipes_from_fds(self, from_child_read, to_child_write)
        except BaseException:
            await self._stop_child()
            raise

    async def _stop_child(self) -> WorkerExit | None:
        child = self._child
        if child is None:
            return None
        exited = child.exited()
        escalation: Literal["none", "terminated", "killed"] = "none"
        if not await _wait(exited, self.close_timeout):
            escalation = "terminated"
            child.terminate()
            if not await _wait(exited, self.kill_timeout):
                escalation = "killed"
                child.kill()
                if not await _wait(exited, 10.0):
                    logger.error("worker process %s survived SIGKILL for 10s", child.pid)
        returncode, pid = child.returncode, child.pid
        child.release()
        if returncode is None:
            return None
        return WorkerExit(pid, returncode, escalation)


async def _wait(future: asyncio.Future[None], timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await asyncio.shield(future)
    except TimeoutError:
        return False
    return True


def worker_pair(**options: Any) -> tuple[WorkerTarget, WorkerTarget]:
    """Two unstarted ends of one channel over OS pipes, in this process: the same
    code paths as a host and its worker, without a process (for tests, and for
    code that must run the same way with and without a worker). Start both
    concurrently: each ``start()`` waits for the other's answer."""
    a_read, b_write = os.pipe()
    b_read, a_write = os.pipe()
    return (
        WorkerTarget.from_fds(a_read, a_write, **options),
        WorkerTarget.from_fds(b_read, b_write, **options),
    )


# -- the child's side ---------------------------------------------------------------------


def _qualified_name(function: Callable[..., Any]) -> str:
    return f"{getattr(function, '__module__', '?')}:{getattr(function, '__qualname__', '?')}"


def resolve_target(target: str | WorkerFunction) -> WorkerFunction:
    """``"pkg.module:function"`` (or ``"pkg.module:Class.method"``) to the function."""
    if not isinstance(target, str):
        return target
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"worker target {target!r} is not 'pkg.module:function'")
    value: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        value = getattr(value, part)
    if not callable(value):
        raise TypeError(f"worker target {target!r} is not callable")
    function: WorkerFunction = value
    return function


async def run_worker(
    function: WorkerFunction,
    thread: WorkerTarget,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
) -> BaseException | None:
    """What a worker process runs: start ``thread``, await
    ``function(thread, *args, **kwargs)``, close the channel.

    The channel closes with 1000 ("worker returned") when the function returns
    and with 1011 ("worker raised ...") when it raises (then the exception
    propagates: the process exits with code 1). When the host closes the channel
    or goes away first, the function is cancelled and the channel's
    ``disconnect_reason`` returned (None when the host closed it normally).
    """
    await thread.start()
    loop = asyncio.get_running_loop()
    work = loop.create_task(_call(function, thread, args, kwargs or {}))
    ended = loop.create_task(thread.wait_closed())
    try:
        await asyncio.wait({work, ended}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        ended.cancel()
    if not work.done():
        work.cancel()
        try:
            await work
        except asyncio.CancelledError:
            pass
        except Exception:
            logger.exception("worker function raised while being cancelled")
        return thread.disconnect_reason
    error = work.exception()
    if error is None:
        await thread.aclose(CloseCode.NORMAL, "worker returned")
        return None
    await thread.aclose(CloseCode.INTERNAL_ERROR, f"worker raised {_describe(error)}")
    raise error


async def _call(
    function: WorkerFunction,
    thread: WorkerTarget,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
) -> None:
    result = function(thread, *args, **kwargs)
    if not inspect.isawaitable(result):
        raise TypeError(f"worker function {_qualified_name(function)} is not a coroutine function")
    await result


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _take_stdio() -> tuple[int, int]:
    """Move the channel off fds 0/1: it gets new fds, stdin becomes /dev/null
    and fd 1 a copy of stderr, so print() cannot corrupt the frames."""
    read_fd, write_fd = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    return read_fd, write_fd


def _refuse(write_fd: int, reason: str) -> None:
    """Tell the host why this worker cannot start, before any event loop: one
    ``__close`` frame written with a blocking write."""
    frame = pack_frames([encode_envelope(control.close(CloseCode.INTERNAL_ERROR, reason))])
    with contextlib.suppress(OSError):
        os.set_blocking(write_fd, True)
        os.write(write_fd, frame)


def _prepare_child(read_fd: int, write_fd: int) -> None:
    # Ctrl-C reaches the whole process group: the host decides when the worker
    # stops (it closes the channel, then terminates it).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for fd in (read_fd, write_fd):
        os.set_inheritable(fd, False)  # not into the worker's own subprocesses


def _serve(
    target: str | WorkerFunction,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    read_fd: int,
    write_fd: int,
    options: Mapping[str, Any],
) -> None:
    _prepare_child(read_fd, write_fd)
    try:
        function = resolve_target(target)
    except Exception as exc:
        _refuse(write_fd, f"cannot load the worker function {target!r}: {_describe(exc)}")
        raise

    async def main() -> BaseException | None:
        thread = WorkerThread.from_fds(read_fd, write_fd, **options)
        return await run_worker(function, thread, args, kwargs)

    reason = asyncio.run(main())
    if reason is not None:
        # Nobody may be listening any more: say it on stderr, and in the exit code.
        print(f"alkpubsub worker: the channel to the host ended: {reason}", file=sys.stderr)
        raise SystemExit(1)


def _child_main(
    target: str | WorkerFunction,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    read_fd: int,
    write_fd: int,
    options: Mapping[str, Any],
) -> None:
    """The ``multiprocessing`` target of a worker started by ``WorkerHost``."""
    _serve(target, args, kwargs, read_fd, write_fd, options)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m alkpubsub.transports.worker pkg.module:function [JSON_ARGS]``:
    run a worker on this process's stdin/stdout (see ``WorkerHost.from_process``).
    ``JSON_ARGS`` is a JSON list of positional arguments."""
    import json

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or len(argv) > 2:
        print(main.__doc__, file=sys.stderr)
        raise SystemExit(2)
    args = json.loads(argv[1]) if len(argv) == 2 else []
    if not isinstance(args, list):
        raise SystemExit("JSON_ARGS must be a JSON list")
    _serve(argv[0], args, {}, *_take_stdio(), {})


if __name__ == "__main__":
    main()
