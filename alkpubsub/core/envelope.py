"""Envelope model and topic rules (SPEC §1)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any, Final

from pydantic import BaseModel, ConfigDict, Field, StrictStr, ValidationError

from .errors import InvalidTopicError, ReservedTypeError

if TYPE_CHECKING:
    from .history import StreamPosition

__all__ = [
    "CONTROL_PREFIX",
    "Event",
    "EventEnvelope",
    "is_control_type",
    "make_event",
    "make_topic",
    "split_topic",
    "validate_topic",
    "validate_type",
]

CONTROL_PREFIX: Final = "__"

# E3: no ':' (so the first ':' of a topic separates type from id), no whitespace,
# no control characters. Checked in pydantic's Rust core on every decode.
_TYPE_PATTERN: Final = r"^[^\s:\x00-\x1f\x7f-\x9f]+$"
_TYPE_RE: Final = re.compile(_TYPE_PATTERN)


class EventEnvelope(BaseModel):
    """The one wire format of every transport (SPEC E1).

    Unknown fields are ignored on input and never emitted (E7).
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Annotated[StrictStr, Field(pattern=_TYPE_PATTERN)]
    id: StrictStr
    payload: Any = None

    @property
    def topic(self) -> str:
        """``f"{type}:{id}"``, the key of every listener and subscription (E2)."""
        return f"{self.type}:{self.id}"

    @property
    def is_control(self) -> bool:
        return self.type.startswith(CONTROL_PREFIX)


def is_control_type(type_: str) -> bool:
    return type_.startswith(CONTROL_PREFIX)


def validate_type(type_: object) -> str:
    """Return ``type_`` if it is a valid event type (E3), else raise ``InvalidTopicError``."""
    if not isinstance(type_, str):
        raise InvalidTopicError(f"event type must be a str, not {type(type_).__name__}")
    if not _TYPE_RE.match(type_):
        raise InvalidTopicError(
            f"invalid event type {type_!r}: it must be non-empty and contain no ':', "
            "whitespace or control characters"
        )
    return type_


def validate_topic(topic: object) -> str:
    """Return ``topic`` if it is ``<valid type>:<any id>``, else raise ``InvalidTopicError``."""
    if not isinstance(topic, str):
        raise InvalidTopicError(f"topic must be a str, not {type(topic).__name__}")
    type_, sep, _ = topic.partition(":")
    if not sep:
        raise InvalidTopicError(f"invalid topic {topic!r}: expected '<type>:<id>'")
    validate_type(type_)
    return topic


def split_topic(topic: str) -> tuple[str, str]:
    """Split a valid topic into ``(type, id)``."""
    type_, _, id_ = validate_topic(topic).partition(":")
    return type_, id_


class Event:
    """What listeners receive: ``.type`` is the topic, ``.detail`` the envelope,
    ``.position`` its stream position when the topic has history and the
    subscription asked for positions (``subscribe(since=...)``), else None."""

    __slots__ = ("detail", "position", "type")

    position: StreamPosition | None

    def __init__(self, type: str, detail: EventEnvelope) -> None:
        if type != detail.topic:
            raise InvalidTopicError(
                f"event type {type!r} does not match its envelope's topic {detail.topic!r}"
            )
        self.type = type
        self.detail = detail
        self.position = None

    @classmethod
    def from_envelope(cls, envelope: EventEnvelope) -> Event:
        event = _new_event(cls)
        event.type = f"{envelope.type}:{envelope.id}"
        event.detail = envelope
        event.position = None
        return event

    def __repr__(self) -> str:
        return f"Event(type={self.type!r}, detail={self.detail!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return self.type == other.type and self.detail == other.detail

    __hash__ = None  # type: ignore[assignment]


_new_event = object.__new__


def make_topic(type: str, id: str) -> str:
    """The topic ``type:id`` of a user event, validated as ``make_event`` does
    (E3, E4): the one check behind publishing and subscribing."""
    validate_type(type)
    if is_control_type(type):
        raise ReservedTypeError(
            f"event type {type!r} is reserved: types starting with '__' are control frames"
        )
    if not isinstance(id, str):
        raise InvalidTopicError(f"event id must be a str, not {type_name(id)}")
    return f"{type}:{id}"


def make_event(type: str, id: str, payload: Any = None) -> Event:
    """Build a validated user event; raises before anything could be sent (E3, E4)."""
    make_topic(type, id)
    try:
        envelope = EventEnvelope(type=type, id=id, payload=payload)
    except ValidationError as exc:  # pragma: no cover - type and id were checked above
        raise InvalidTopicError(str(exc)) from None
    return Event.from_envelope(envelope)


def type_name(value: object) -> str:
    return type(value).__name__


def check_user_event(event: object) -> Event:
    """Validate an event handed to ``dispatch_event`` by user code."""
    if not isinstance(event, Event):
        raise TypeError(f"dispatch_event expects an alkpubsub Event, not {type_name(event)}")
    if event.detail.is_control:
        raise ReservedTypeError(
            f"event type {event.detail.type!r} is reserved: types starting with '__' "
            "are control frames"
        )
    return event
