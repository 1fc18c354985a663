"""The control frames of SPEC §2, built and parsed in one place."""

from __future__ import annotations

from typing import Any, Final

from .envelope import EventEnvelope, validate_topic
from .errors import InvalidTopicError

__all__ = [
    "CLOSE",
    "ERROR",
    "FORBIDDEN",
    "HELLO",
    "PING",
    "PONG",
    "PROTOCOL_VERSION",
    "SUBSCRIBE",
    "UNSUBSCRIBE",
    "TOO_MANY_TOPICS",
    "WELCOME",
    "close",
    "close_fields",
    "error",
    "error_fields",
    "hello",
    "ping",
    "pong",
    "subscribe",
    "subscription_topic",
    "unsubscribe",
    "welcome",
    "welcome_spoke_id",
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

# Error codes carried by ``__error`` frames.
FORBIDDEN: Final = "forbidden"
TOO_MANY_TOPICS: Final = "too_many_topics"


def _control(type_: str, payload: Any, id_: str = "") -> EventEnvelope:
    # Control envelopes are built by us from trusted values: skip validation.
    return EventEnvelope.model_construct(type=type_, id=id_, payload=payload)


def subscribe(topic: str) -> EventEnvelope:
    return _control(SUBSCRIBE, {"topic": topic})


def unsubscribe(topic: str) -> EventEnvelope:
    return _control(UNSUBSCRIBE, {"topic": topic})


def hello() -> EventEnvelope:
    return _control(HELLO, {"protocol": PROTOCOL_VERSION})


def welcome(spoke_id: str) -> EventEnvelope:
    return _control(WELCOME, {"protocol": PROTOCOL_VERSION, "spoke_id": spoke_id})


def ping(nonce: str) -> EventEnvelope:
    return _control(PING, {}, nonce)


def pong(nonce: str) -> EventEnvelope:
    return _control(PONG, {}, nonce)


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


def welcome_spoke_id(envelope: EventEnvelope) -> str | None:
    payload = envelope.payload
    if isinstance(payload, dict):
        spoke_id = payload.get("spoke_id")
        if isinstance(spoke_id, str) and spoke_id:
            return spoke_id
    return None
