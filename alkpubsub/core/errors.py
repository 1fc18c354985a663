"""One exception hierarchy for the whole library.

Input errors are ``ValueError`` subclasses so that callers validating user input
can catch them generically; runtime conditions (closed, backpressure) are not.
"""

from __future__ import annotations

from collections.abc import Sequence

from .close import CloseCode

__all__ = [
    "AlkPubSubError",
    "BackpressureError",
    "DecodeError",
    "FrameTooLargeError",
    "FramingError",
    "ConnectionLostError",
    "ConnectionRefusedByHubError",
    "HubRefusalError",
    "LinkClosedError",
    "InvalidEnvelopeError",
    "InvalidTopicError",
    "MissingExtraError",
    "ReservedTypeError",
    "SubscriptionOverflowError",
    "TargetClosedError",
    "UnknownTransportError",
]


class AlkPubSubError(Exception):
    """Base class of every error raised by alkpubsub."""


class InvalidEnvelopeError(AlkPubSubError, ValueError):
    """An envelope, type, id or topic is not acceptable (SPEC E1-E3)."""


class InvalidTopicError(InvalidEnvelopeError):
    """A type or topic breaks the topic rules (SPEC E2, E3)."""


class ReservedTypeError(InvalidEnvelopeError):
    """User code tried to publish a type starting with ``__`` (SPEC E4)."""


class FrameTooLargeError(AlkPubSubError, ValueError):
    """An encoded envelope exceeds ``max_frame_bytes`` (SPEC E6)."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"encoded envelope is {size} bytes, above max_frame_bytes={limit}")
        self.size = size
        self.limit = limit


class DecodeError(AlkPubSubError, ValueError):
    """Received bytes are not a valid envelope; the frame is dropped (SPEC B10)."""


class FramingError(AlkPubSubError, ValueError):
    """A byte stream broke the framing rules (SPEC F2); the connection must close.

    ``close_code`` is the close code to use (``MESSAGE_TOO_BIG`` for an oversized
    frame, ``PROTOCOL_ERROR`` otherwise). ``frames`` are the whole frames that
    preceded the violation in the same chunk: they were received intact, and a
    receiver that delivers them loses nothing the peer sent before the bad bytes.
    """

    def __init__(
        self,
        message: str,
        close_code: int = CloseCode.PROTOCOL_ERROR,
        frames: Sequence[bytes] = (),
    ) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.frames: list[bytes] = list(frames)


class TargetClosedError(AlkPubSubError, RuntimeError):
    """The target was closed; it accepts no more events (SPEC B11)."""


class BackpressureError(AlkPubSubError, RuntimeError):
    """The outgoing queue or offline outbox is full; ``await target.drain()`` (SPEC B13)."""


class SubscriptionOverflowError(BackpressureError):
    """A ``subscribe()`` iterator's buffer overflowed under ``overflow="raise"``."""


class UnknownTransportError(AlkPubSubError, LookupError):
    """No transport is registered under that name or URL scheme."""


class MissingExtraError(AlkPubSubError, ImportError):
    """A transport's optional dependency is not installed."""


class HubRefusalError(AlkPubSubError):
    """The hub answered with ``__error`` (e.g. ``forbidden``, SPEC B12)."""

    def __init__(self, code: str, message: str, topic: str | None = None) -> None:
        super().__init__(f"hub refused ({code}){f' on {topic!r}' if topic else ''}: {message}")
        self.code = code
        self.topic = topic


class ConnectionRefusedByHubError(AlkPubSubError, ConnectionError):
    """The hub refused the connection (HTTP 401/403, unknown peer, wrong ALPN)."""


class ConnectionLostError(AlkPubSubError, ConnectionError):
    """The connection broke without a close: the peer died, the network failed,
    or nothing was heard from the peer within its heartbeat timeout."""


class LinkClosedError(AlkPubSubError, ConnectionError):
    """The other side closed the connection with a code other than a normal
    close: ``TRY_AGAIN_LATER`` (slow consumer, B8), a protocol violation
    (``MESSAGE_TOO_BIG``, ``PROTOCOL_ERROR``, ``INVALID_DATA``), or an
    application's own code. Passed to a spoke's ``on_disconnect``."""

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(
            f"connection closed by peer with code {code}" + (f": {reason}" if reason else "")
        )
        self.code = code
        self.reason = reason
