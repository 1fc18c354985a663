"""Redis transport: ``redis``, a symmetric event target over Redis pub/sub.

Channel = ``prefix + topic`` (``alkpubsub:job.status:42``); message = the
envelope JSON of the core codec, the same bytes as on every other transport.

``RedisEventTarget`` is a ``SpokeTarget`` whose link is Redis: the shared
forwarder does the refcounting (one ``SUBSCRIBE`` per topic, ``UNSUBSCRIBE``
with the last listener), the bounded outbox, the capped jittered backoff, the
resubscription after a reconnect and ``drain()``. ``RedisLink.send`` turns the
forwarder's frames into Redis commands: ``__subscribe``/``__unsubscribe`` into
``SUBSCRIBE``/``UNSUBSCRIBE`` on the subscriber connection, data frames into
pipelined ``PUBLISH`` on the publish connection, ``__ping`` into a ``PING`` on
the subscriber connection whose reply comes back to the forwarder as a
``__pong``. See ``docs/redis.md``.

Ordering across the two connections: a ``PUBLISH`` is written only once every
``SUBSCRIBE`` before it has been confirmed, and a ``PING`` only once every
``PUBLISH`` before it has been answered; so a target hears what it publishes
after subscribing (as a spoke does through a hub), a reconnect resubscribes
before it sends the outbox (B7), and ``flush()`` means that Redis confirmed every
subscription and accepted every publication sent so far (B4).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Final
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import ConnectionPool, Redis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)

from ..core import control
from ..core.close import CloseCode
from ..core.codec import encode_envelope
from ..core.errors import ConnectionRefusedByHubError, HubRefusalError, TargetClosedError
from ..core.forwarder import ForwarderStats
from ..target import call_user
from .link import Link
from .spoke import SpokeTarget

__all__ = ["DEFAULT_PREFIX", "DEFAULT_URL", "RedisEventTarget", "RedisLink", "RedisStats"]

logger = logging.getLogger(__name__)

DEFAULT_URL: Final = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX: Final = "alkpubsub:"

#: Room allowed on top of ``max_frame_bytes`` for the origin mark of a target
#: with ``echo=False`` (``,"origin":"<22 characters>"}``).
ORIGIN_ALLOWANCE: Final = 64

#: Channels per ``SUBSCRIBE``/``UNSUBSCRIBE`` command (a resubscription after a
#: reconnect sends every live topic).
CHANNELS_PER_COMMAND: Final = 1000

# Frames of our own codec start with type and id, in this order, as JSON
# strings; those without escapes are read without a JSON parser.
_HEAD: Final = re.compile(rb'\{"type":"([^"\\]*)","id":"([^"\\]*)"')
_CONTROL_HEAD: Final = b'{"type":"__'


def redact_url(url: str) -> str:
    """``url`` without its password (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}{port}"))


def _command(*parts: bytes) -> bytes:
    """One RESP command (an array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%b\r\n" % (len(part), part))
    return b"".join(out)


#: PUBLISH replies read before the batch's deadline is moved on by socket_timeout.
_REPLIES_PER_DEADLINE: Final = 64


def _publish_command(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nPUBLISH\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (
        len(channel),
        channel,
        len(data),
        data,
    )


def frame_topic(frame: bytes) -> bytes | None:
    """The topic (``type:id``, UTF-8) of an encoded envelope, or None if it is
    not one. The frames of our codec are read without a JSON parser."""
    head = _HEAD.match(frame)
    if head is not None:
        return head.group(1) + b":" + head.group(2)
    try:
        value = json.loads(frame)
    except ValueError:
        return None
    if not isinstance(value, dict):
        return None
    type_, id_ = value.get("type"), value.get("id")
    if not isinstance(type_, str) or not isinstance(id_, str):
        return None
    return f"{type_}:{id_}".encode()


def is_refusal(exc: BaseException) -> bool:
    """Wrong password, unknown user, missing ACL permission: retrying soon will
    not help (reported as a refusal, backed off like any failure)."""
    if isinstance(exc, AuthenticationError | AuthorizationError | NoPermissionError):
        return True
    text = str(exc)
    return isinstance(exc, ResponseError) and text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))


@dataclass
class RedisStats:
    """What a Redis target dropped or did, beyond the forwarder's counters."""

    published: int = 0  # PUBLISH commands accepted by Redis
    received: int = 0  # messages read from subscribed channels
    not_envelope: int = 0  # not JSON, not an object, missing or mistyped type/id
    topic_mismatch: int = 0  # the envelope's topic is not its channel's
    control_type: int = 0  # a '__' type on a channel: never delivered (E4)
    oversized: int = 0  # above max_frame_bytes (E6)
    own_echoes: int = 0  # our own publications, dropped because echo=False
    subscribe_errors: int = 0  # SUBSCRIBE refused by Redis (ACL)
    publish_errors: int = 0  # PUBLISH refused by Redis (ACL): that event is lost

    @property
    def dropped(self) -> int:
        return self.not_envelope + self.topic_mismatch + self.control_type + self.oversized


class RedisLink:
    """One live pair of Redis connections (publish + dedicated subscriber)
    presented to the spoke shell as a ``Link``."""

    def __init__(
        self,
        publisher: AbstractConnection,
        subscriber: AbstractConnection,
        *,
        prefix: bytes,
        max_frame_bytes: int,
        stats: RedisStats,
        forwarder_stats: ForwarderStats,
        origin_suffix: bytes | None,
        on_refusal: Callable[[BaseException], None],
        url: str,
    ) -> None:
        self._pub = publisher
        self._sub = subscriber
        self._prefix = prefix
        self._prefix_len = len(prefix)
        self._max_frame_bytes = max_frame_bytes
        self._stats = stats
        self._forwarder_stats = forwarder_stats
        self._origin_suffix = origin_suffix
        self._on_refusal = on_refusal
        self._url = url
        self._broken: BaseException | None = None
        # SUBSCRIBE replies still expected; publishes wait until it is 0.
        self._unconfirmed = 0
        self._confirmed = asyncio.Event()
        self._confirmed.set()
        self._warned: set[str] = set()

    # -- sending ---------------------------------------------------------------------

    async def send(self, frames: list[bytes]) -> None:
        sub_commands: list[bytes] = []
        publishes: list[bytes] = []
        prefix = self._prefix
        suffix = self._origin_suffix
        for frame in frames:
            if frame.startswith(_CONTROL_HEAD):
                await self._control(frame, sub_commands, publishes)
                continue
            topic = frame_topic(frame)
            if topic is None:  # pragma: no cover - the forwarder only queues envelopes
                continue
            if sub_commands or self._unconfirmed:
                # Publish only what Redis will route to subscriptions made before.
                await self._write_sub(sub_commands)
                await self._publish(publishes)
                await self._wait_confirmed()
            data = frame if suffix is None else frame[:-1] + suffix
            publishes.append(_publish_command(prefix + topic, data))
        await self._write_sub(sub_commands)
        await self._publish(publishes)

    async def _control(
        self, frame: bytes, sub_commands: list[bytes], publishes: list[bytes]
    ) -> None:
        envelope = json.loads(frame)
        kind = envelope.get("type")
        if kind in (control.SUBSCRIBE, control.UNSUBSCRIBE):
            topic = envelope["payload"]["topic"].encode()
            verb = b"SUBSCRIBE" if kind == control.SUBSCRIBE else b"UNSUBSCRIBE"
            if kind == control.SUBSCRIBE:
                self._unconfirmed += 1
                self._confirmed.clear()
            sub_commands.append(_command(verb, self._prefix + topic))
        elif kind == control.PING:
            # Answered once Redis accepted every publish before it and confirmed
            # every subscription before it: PING on the subscriber connection,
            # after the replies of the publishes.
            await self._write_sub(sub_commands)
            await self._publish(publishes)
            nonce = str(envelope.get("id", "")).encode()
            await self._write_sub([_command(b"PING", nonce)])
        # Other control frames (__hello, __pong, ...) mean nothing to Redis.

    async def _write_sub(self, commands: list[bytes]) -> None:
        if not commands:
            return
        self._check_open()
        data = b"".join(commands)
        commands.clear()
        try:
            await self._sub.send_packed_command(data, check_health=False)
        except (RedisError, OSError) as exc:
            raise self._lost(exc) from None

    async def _publish(self, publishes: list[bytes]) -> None:
        if not publishes:
            return
        self._check_open()
        count = len(publishes)
        data = b"".join(publishes)
        publishes.clear()
        pub = self._pub
        timeout = pub.socket_timeout
        try:
            await pub.send_packed_command(data, check_health=False)
            # One timer for the batch's replies instead of one per reply (math.inf:
            # redis-py's own per-read timer off), moved on as replies come in.
            async with asyncio.timeout(timeout) as deadline:
                await self._read_publish_replies(pub, count, deadline, timeout)
        except TimeoutError:
            raise self._lost(TimeoutError(f"no reply to PUBLISH within {timeout}s")) from None
        except (RedisError, OSError) as exc:
            raise self._lost(exc) from None

    async def _read_publish_replies(
        self, pub: AbstractConnection, count: int, deadline: asyncio.Timeout, timeout: float | None
    ) -> None:
        loop = asyncio.get_running_loop()
        for index in range(count):
            if timeout is not None and index % _REPLIES_PER_DEADLINE == 0:
                deadline.reschedule(loop.time() + timeout)  # socket_timeout per reply, roughly
            try:
                await pub.read_response(timeout=math.inf, disconnect_on_error=False)
            except ResponseError as exc:  # e.g. NOPERM on a channel: only that one
                self._warn_once("publish", "Redis refused a PUBLISH: %s", exc)
                self._stats.publish_errors += 1
                if is_refusal(exc):
                    self._on_refusal(HubRefusalError("forbidden", str(exc)))
                continue
            self._stats.published += 1

    async def _wait_confirmed(self) -> None:
        while self._unconfirmed:
            self._check_open()
            await self._confirmed.wait()

    def _check_open(self) -> None:
        # redis-py reconnects a connection on send by itself; a link never does.
        if self._broken is not None:
            raise ConnectionError(f"Redis connection to {self._url} lost: {self._broken}")
        if not (self._pub.is_connected and self._sub.is_connected):
            raise ConnectionError(f"Redis connection to {self._url} lost")

    def _lost(self, exc: BaseException) -> ConnectionError:
        if self._broken is None:
            self._broken = exc
        self._confirmed.set()  # wake a writer waiting for confirmations
        return ConnectionError(f"Redis connection to {self._url} lost: {exc}")

    # -- receiving -------------------------------------------------------------------

    async def messages(self) -> AsyncIterator[bytes | str]:
        read = self._sub.read_response
        check = self._check
        pong = self._pong
        while True:
            try:
                reply = await read(disconnect_on_error=False)
            except ResponseError as exc:
                self._subscribe_refused(exc)
                continue
            except (RedisError, OSError) as exc:
                raise self._lost(exc) from None
            if type(reply) is list and reply:
                kind = reply[0]
                if kind == b"message":
                    frame = check(reply[1], reply[2])
                    if frame is not None:
                        yield frame
                elif kind == b"subscribe":
                    self._confirm()
                elif kind == b"pong":
                    yield pong(reply[1])
                # unsubscribe confirmations need nothing
            elif isinstance(reply, bytes):  # PING reply while subscribed to nothing
                yield pong(reply)
            elif reply is None:
                raise self._lost(ConnectionError("connection closed"))

    def _pong(self, nonce: bytes) -> bytes:
        return encode_envelope(control.pong(nonce.decode(errors="replace")))

    def _confirm(self) -> None:
        if self._unconfirmed:
            self._unconfirmed -= 1
            if not self._unconfirmed:
                self._confirmed.set()

    def _subscribe_refused(self, exc: ResponseError) -> None:
        # The only commands on this connection are SUBSCRIBE, UNSUBSCRIBE and PING;
        # an error answers a SUBSCRIBE (an ACL without access to the channel).
        self._stats.subscribe_errors += 1
        self._confirm()
        self._warn_once("subscribe", "Redis refused a SUBSCRIBE: %s", exc)
        self._on_refusal(HubRefusalError("forbidden", str(exc)))

    def _check(self, channel: bytes, data: bytes) -> bytes | None:
        """``data`` if it is an envelope of its channel's topic; else count, log, None."""
        stats = self._stats
        stats.received += 1
        suffix = self._origin_suffix
        if suffix is not None and data.endswith(suffix):
            stats.own_echoes += 1
            return None
        if len(data) > self._max_frame_bytes + ORIGIN_ALLOWANCE:
            stats.oversized += 1
            self._drop("oversized", channel, f"{len(data)} bytes")
            return None
        topic = frame_topic(data)
        if topic is None:
            stats.not_envelope += 1
            self._drop("not_envelope", channel, "not an envelope")
            return None
        if topic != channel[self._prefix_len :]:
            stats.topic_mismatch += 1
            self._drop("topic_mismatch", channel, f"envelope topic {topic!r}")
            return None
        if topic.startswith(b"__"):
            stats.control_type += 1
            self._drop("control_type", channel, "control frame on a channel")
            return None
        return data

    def _drop(self, kind: str, channel: bytes, detail: str) -> None:
        self._forwarder_stats.invalid_frames += 1
        self._warn_once(kind, "dropped a message on %r: %s", channel, detail)

    def _warn_once(self, kind: str, message: str, *args: Any) -> None:
        """First of a kind at WARNING, the rest at DEBUG: garbage cannot flood the log."""
        level = logging.DEBUG if kind in self._warned else logging.WARNING
        self._warned.add(kind)
        logger.log(level, message, *args)

    # -- the rest of the Link protocol -----------------------------------------------------

    def transport_buffered(self) -> int:
        return 0  # send() returns once Redis answered

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        for connection in (self._sub, self._pub):
            with contextlib.suppress(Exception):
                await connection.disconnect(nowait=True)


class RedisEventTarget(SpokeTarget):
    """A symmetric ``TypedEventTarget`` over Redis pub/sub (SPEC §6 ``redis``).

    Every target on the same Redis and ``prefix`` is on one bus: a listener on
    any of them hears what any of them dispatches, its own dispatches included
    (once, through Redis, as a spoke hears itself through a hub), unless
    ``echo=False`` (what a hub's bridge uses: see ``docs/scale-out.md``).

    ``client``: a caller-owned ``redis.asyncio.Redis`` whose connection settings
    are used for the target's two connections; ``aclose()`` leaves it open.
    Otherwise the target connects to ``url`` (``redis://``, ``rediss://`` for
    TLS, ``unix://``); ``redis_options`` go to redis-py's connection pool.
    """

    transport_name = "redis"
    url_schemes: ClassVar[tuple[str, ...]] = ("redis", "rediss")

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = DEFAULT_PREFIX,
        client: Redis | None = None,
        echo: bool = True,
        redis_options: dict[str, Any] | None = None,
        wait_connected: bool = True,
        on_error: Callable[[BaseException], None] | None = None,
        **spoke_options: Any,
    ) -> None:
        if client is not None and url is not None:
            raise ValueError("give a url or a client, not both")
        super().__init__(
            wait_connected=False,  # start() waits itself, and fails fast on refusals
            send_hello=False,
            on_error=self._report_error,
            **spoke_options,
        )
        if client is not None:
            pool = client.connection_pool
            self.url = _describe_pool(pool)
        else:
            self.url = url or DEFAULT_URL
            pool = ConnectionPool.from_url(self.url, **(redis_options or {}))
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self.prefix = prefix
        self._prefix = prefix.encode()
        #: False: this target never hears its own publications (they carry an
        #: origin mark); set before start().
        self.echo = echo
        self.origin = secrets.token_urlsafe(16)
        self.redis_stats = RedisStats()
        self._wait_for_connection = wait_connected
        self._user_on_error = on_error
        self._refusal: asyncio.Future[BaseException] | None = None
        self._start_called = False

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisEventTarget:
        return cls(url, **options)

    @property
    def safe_url(self) -> str:
        """The URL without its password."""
        return redact_url(self.url)

    @property
    def origin_suffix(self) -> bytes | None:
        if self.echo:
            return None
        return b',"origin":"' + self.origin.encode() + b'"}'

    # -- life cycle ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._closed:
            raise TargetClosedError("target is closed")
        if self._start_called:
            return
        self._start_called = True
        loop = asyncio.get_running_loop()
        self._refusal = loop.create_future() if self._wait_for_connection else None
        await super().start()
        if self._refusal is None:
            return
        connected: asyncio.Future[Any] = asyncio.ensure_future(self.wait_connected())
        refused: asyncio.Future[Any] = self._refusal
        try:
            done, _ = await asyncio.wait(
                {connected, refused},
                timeout=self.connect_timeout,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            connected.cancel()
            await asyncio.gather(connected, return_exceptions=True)
        if self.connected:
            self._refusal = None
            return
        refusal = refused.result() if refused in done else None
        last_error = self.last_error
        self._refusal = None
        await self.aclose()
        if refusal is not None:
            raise ConnectionRefusedByHubError(
                f"Redis at {self.safe_url} refused the connection: {refusal}"
            ) from None
        detail = f" (last error: {last_error})" if last_error is not None else ""
        raise ConnectionError(
            f"could not connect to Redis at {self.safe_url} within {self.connect_timeout}s{detail}"
        ) from None

    def _report_error(self, exc: BaseException) -> None:
        refusal = self._refusal
        if isinstance(exc, ConnectionRefusedByHubError) and refusal and not refusal.done():
            refusal.set_result(exc)
        call_user(self._user_on_error, exc, log=logger)

    async def open_link(self) -> Link:
        publisher = self._new_connection("alkpubsub-pub", subscriber=False)
        subscriber = self._new_connection("alkpubsub-sub", subscriber=True)
        try:
            await asyncio.gather(publisher.connect(), subscriber.connect())  # type: ignore[no-untyped-call]
        except BaseException as exc:
            for connection in (publisher, subscriber):
                with contextlib.suppress(Exception):
                    await connection.disconnect(nowait=True)
            if isinstance(exc, Exception) and is_refusal(exc):
                raise ConnectionRefusedByHubError(str(exc)) from None
            if isinstance(exc, RedisError | OSError):
                raise ConnectionError(f"cannot reach Redis at {self.safe_url}: {exc}") from None
            raise
        return RedisLink(
            publisher,
            subscriber,
            prefix=self._prefix,
            max_frame_bytes=self.max_frame_bytes,
            stats=self.redis_stats,
            forwarder_stats=self.stats,
            origin_suffix=self.origin_suffix,
            on_refusal=self._report_error,
            url=self.safe_url,
        )

    def _new_connection(self, name: str, *, subscriber: bool) -> AbstractConnection:
        kwargs = dict(self._connection_kwargs)
        # Our loops own health and retries: no PING sneaking onto the subscriber
        # connection, no hidden retry loop under the supervisor's backoff.
        kwargs["health_check_interval"] = 0
        kwargs.pop("retry", None)
        kwargs.pop("retry_on_error", None)
        kwargs.pop("retry_on_timeout", None)
        for key in [key for key in kwargs if "maint" in key]:
            del kwargs[key]  # redis-py 8 cluster maintenance: RESP3 only, not ours
        kwargs.setdefault("client_name", name)
        kwargs.setdefault("socket_connect_timeout", self.connect_timeout)
        if subscriber:
            kwargs["socket_timeout"] = None  # an idle subscription is not a timeout
        kwargs["protocol"] = 2  # pub/sub replies as arrays on the subscriber connection
        kwargs["decode_responses"] = False  # envelopes stay bytes
        connection: AbstractConnection = self._connection_class(**kwargs)
        return connection

    def __repr__(self) -> str:
        return f"<RedisEventTarget {self.state.value} {self.safe_url} prefix={self.prefix!r}>"


def _describe_pool(pool: ConnectionPool) -> str:
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if "ssl" in pool.connection_class.__name__.lower() else "redis"
    host, port, db = kwargs.get("host", "localhost"), kwargs.get("port", 6379), kwargs.get("db", 0)
    return f"{scheme}://{host}:{port}/{db}"
