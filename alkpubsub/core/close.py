"""Close codes: the WebSocket codes (RFC 6455) that alkpubsub uses on every
transport (Iroh carries them as QUIC application close codes), and its own."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["FINAL_CLOSE_CODES", "NORMAL_CLOSE_CODES", "CloseCode"]


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001  # the hub is shutting down
    PROTOCOL_ERROR = 1002  # framing violation (F2), handshake failure
    UNSUPPORTED_DATA = 1003  # a message type the endpoint does not accept
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008  # refused peer (Iroh allow-list), too many invalid frames
    MESSAGE_TOO_BIG = 1009  # E6
    INTERNAL_ERROR = 1011
    TRY_AGAIN_LATER = 1013  # slow consumer cut off (B8)
    # Application codes (4000-4999), ours:
    RECONNECTING = 4000  # a spoke dropped this link and will resume its session
    UNAUTHORIZED = 4401  # refused: no or bad credentials (final: do not retry)
    FORBIDDEN = 4403  # refused: not allowed (final: do not retry)
    HEARTBEAT_TIMEOUT = 4408  # nothing heard from the peer within its heartbeat timeout
    SESSION_IN_USE = 4409  # the resume token belongs to a live connection (retry later)


#: Closes that are not an error: ``on_disconnect`` receives ``None`` for them.
NORMAL_CLOSE_CODES = frozenset({CloseCode.NORMAL, CloseCode.GOING_AWAY})

#: Refusals a spoke must not retry: it closes and reports them.
FINAL_CLOSE_CODES = frozenset({CloseCode.UNAUTHORIZED, CloseCode.FORBIDDEN})
