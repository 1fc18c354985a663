"""The control frames of SPEC §2, built and parsed in one place."""

from __future__ import annotations

from typing import Any, Final

from .envelope import EventEnvelope, validate_topic
from .errors import InvalidTopicError

__all__ = [
    "ACK",
    "CLOSE",
    "ERROR",
    "FORBIDDEN",
    "HELLO",
    "PING",
    "PONG",
    "POSITION",
    "PROTOCOL_VERSION",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "TOO_MANY_TOPICS",
    "WELCOME",
    "Hello",
    "Welcome",
    "ack",
    "close",
    "close_fields",
    "error",
    "error_fields",
    "hello",
    "ping",
    "pong",
    "position",
    "position_fields",
    "subscribe",
    "received_count",
    "subscription_since",
    "subscription_topic",
    "unsubscribe",
    "welcome",
]

PROTOCOL_VERSION: Final = 1

SUBSCRIBE: Final = "__subscribe"
UNSUBSCRIBE: Final = "__unsubscribe"
HELLO: Final = "__hello"
WELCOME: Final = "__welcome"
PING: Final = "__ping"
PONG: Final = "__pong"
ERROR: Final = "__error"
CLOSE: Final = "__close"
ACK: Final = "__ack"
POSITION: Final = "__position"

# Error codes carried by ``__error`` frames.
FORBIDDEN: Final = "forbidden"
TOO_MANY_TOPICS: Final = "too_many_topics"
TOPIC_TOO_LONG: Final = "topic_too_long"
INVALID_FRAME: Final = "invalid_frame"
INVALID_CONTROL: Final = "invalid_control"


def _count(value: object) -> int | None:
    """A non-negative int from a peer, or None (bool is not a count)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def _control(type_: str, payload: Any, id_: str = "") -> EventEnvelope:
    # Control envelopes are built by us from trusted values: skip validation.
    return EventEnvelope.model_construct(type=type_, id=id_, payload=payload)


def subscribe(topic: str, since: str | None = None) -> EventEnvelope:
    """``since``: recover from this stream position (``"<epoch>:<offset>"``), or
    ``""`` to learn the topic's current position; the hub answers ``__position``."""
    if since is None:
        return _control(SUBSCRIBE, {"topic": topic})
    return _control(SUBSCRIBE, {"topic": topic, "since": since})


def position(topic: str, at: str | None, recovered: bool) -> EventEnvelope:
    """The stream position of ``topic`` just before the frames that follow it
    (replayed ones first, then live ones); None when the topic has no history."""
    return _control(POSITION, {"topic": topic, "position": at, "recovered": recovered})


def subscription_since(envelope: EventEnvelope) -> str | None:
    """The ``since`` of a ``__subscribe``: a position, ``""``, or None when absent."""
    payload = envelope.payload
    since = payload.get("since") if isinstance(payload, dict) else None
    return since if isinstance(since, str) else None


def position_fields(envelope: EventEnvelope) -> tuple[str, str | None, bool] | None:
    """``(topic, position, recovered)`` of a ``__position``, or None when malformed."""
    payload = envelope.payload
    if not isinstance(payload, dict):
        return None
    topic, at = payload.get("topic"), payload.get("position")
    if not isinstance(topic, str) or not (at is None or isinstance(at, str)):
        return None
    return topic, at, payload.get("recovered") is True


def unsubscribe(topic: str) -> EventEnvelope:
    return _control(UNSUBSCRIBE, {"topic": topic})


def hello(
    *,
    session: bool = False,
    resume: str | None = None,
    received: int = 0,
    heartbeat: float | None = None,
) -> EventEnvelope:
    """The spoke's first frame; with ``session`` it asks for a resumable session
    (``resume``: the token of the one to continue, ``received``: data frames it
    got in it), with ``heartbeat`` it promises a frame at least that often."""
    payload: dict[str, Any] = {"protocol": PROTOCOL_VERSION}
    if session:
        payload["session"] = True
        if resume is not None:
            payload["resume"] = resume
            payload["received"] = received
    if heartbeat is not None:
        payload["heartbeat"] = heartbeat
    return _control(HELLO, payload)


def welcome(
    spoke_id: str,
    *,
    token: str | None = None,
    resumed: bool = False,
    received: int = 0,
    gap: bool = False,
) -> EventEnvelope:
    """The hub's first frame; ``token`` only when a session was granted."""
    payload: dict[str, Any] = {"protocol": PROTOCOL_VERSION, "spoke_id": spoke_id}
    if token is not None:
        payload.update(token=token, resumed=resumed, received=received, gap=gap)
    return _control(WELCOME, payload)


def ping(nonce: str, received: int | None = None) -> EventEnvelope:
    return _control(PING, {} if received is None else {"received": received}, nonce)


def pong(nonce: str, received: int | None = None) -> EventEnvelope:
    return _control(PONG, {} if received is None else {"received": received}, nonce)


def ack(received: int) -> EventEnvelope:
    """Confirms ``received`` data frames of this session."""
    return _control(ACK, {"received": received})


def error(code: str, message: str, topic: str | None = None) -> EventEnvelope:
    payload: dict[str, str] = {"code": code, "message": message}
    if topic is not None:
        payload["topic"] = topic
    return _control(ERROR, payload)


def close(code: int, reason: str) -> EventEnvelope:
    """Announces why the sender is about to close the connection, for links
    that cannot carry a close code themselves (byte streams, pipes)."""
    return _control(CLOSE, {"code": int(code), "reason": reason})


def subscription_topic(envelope: EventEnvelope) -> str | None:
    """The valid topic of a ``__subscribe``/``__unsubscribe`` frame, or None (C1)."""
    payload = envelope.payload
    if not isinstance(payload, dict):
        return None
    topic = payload.get("topic")
    if not isinstance(topic, str) or not topic:
        return None
    try:
        return validate_topic(topic)
    except InvalidTopicError:
        return None


def error_fields(envelope: EventEnvelope) -> tuple[str, str, str | None]:
    """``(code, message, topic)`` of an ``__error`` frame, tolerating bad shapes."""
    payload = envelope.payload if isinstance(envelope.payload, dict) else {}
    topic = payload.get("topic")
    return (
        str(payload.get("code", "unknown")),
        str(payload.get("message", "")),
        topic if isinstance(topic, str) else None,
    )


def close_fields(envelope: EventEnvelope) -> tuple[int, str] | None:
    """``(code, reason)`` of a ``__close`` frame, or None when malformed."""
    payload = envelope.payload
    if not isinstance(payload, dict):
        return None
    code = payload.get("code")
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 4999:
        return None
    reason = payload.get("reason")
    return code, reason if isinstance(reason, str) else ""


def received_count(envelope: EventEnvelope) -> int | None:
    """The ``received`` count of an ``__ack``, ``__ping`` or ``__pong``, if any."""
    payload = envelope.payload
    return _count(payload.get("received")) if isinstance(payload, dict) else None


class Hello:
    """A parsed ``__hello``; absent or malformed fields mean 'not asked for'."""

    __slots__ = ("heartbeat", "received", "resume", "session")

    def __init__(self, envelope: EventEnvelope) -> None:
        payload = envelope.payload if isinstance(envelope.payload, dict) else {}
        self.session = payload.get("session") is True
        resume = payload.get("resume")
        self.resume = resume if isinstance(resume, str) and resume else None
        self.received = _count(payload.get("received")) or 0
        heartbeat = payload.get("heartbeat")
        self.heartbeat = (
            float(heartbeat)
            if isinstance(heartbeat, int | float)
            and not isinstance(heartbeat, bool)
            and 0 < heartbeat <= 3600
            else None
        )


class Welcome:
    """A parsed ``__welcome``."""

    __slots__ = ("gap", "received", "resumed", "spoke_id", "token")

    def __init__(self, envelope: EventEnvelope) -> None:
        payload = envelope.payload if isinstance(envelope.payload, dict) else {}
        spoke_id = payload.get("spoke_id")
        self.spoke_id = spoke_id if isinstance(spoke_id, str) and spoke_id else None
        token = payload.get("token")
        self.token = token if isinstance(token, str) and token else None
        self.resumed = self.token is not None and payload.get("resumed") is True
        self.received = _count(payload.get("received")) or 0
        self.gap = payload.get("gap") is True
