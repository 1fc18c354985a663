"""Session bookkeeping shared by spokes and hubs (protocol.md §5): data frames
counted in each direction, acknowledged with ``__ack``, kept until the peer
confirmed them, and re-sent after a resume. Pure logic, no I/O, no clock.

Only data frames (user envelopes) are counted; control frames never are.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Iterable
from typing import Final

__all__ = [
    "ACK_EVERY_BYTES",
    "ACK_EVERY_FRAMES",
    "Liveness",
    "Receipts",
    "SentLog",
    "new_token",
]

#: An ``__ack`` is due after this many data frames or bytes received since the
#: last one (pings and pongs carry acks too, so an idle link is acked by its
#: heartbeat).
ACK_EVERY_FRAMES: Final = 64
ACK_EVERY_BYTES: Final = 64 * 1024


def new_token() -> str:
    """An unguessable resume token (192 bits)."""
    return secrets.token_urlsafe(24)


class SentLog:
    """Data frames written to the peer and not yet acknowledged, in order."""

    __slots__ = ("_frames", "acked", "intact", "nbytes")

    def __init__(self, acked: int = 0) -> None:
        self._frames: deque[bytes] = deque()
        #: Data frames the peer confirmed in this session (its ``received``).
        self.acked = acked
        self.nbytes = 0
        #: False once unconfirmed frames were dropped: a resume cannot resend them.
        self.intact = True

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def sent(self) -> int:
        """Data frames written in this session."""
        return self.acked + len(self._frames)

    def record(self, frames: Iterable[bytes]) -> None:
        """Remember the data frames among ``frames`` (plain ``bytes``; control
        frames are ``ControlFrame`` instances and are not counted)."""
        log = self._frames
        size = 0
        for frame in frames:
            if type(frame) is bytes:
                log.append(frame)
                size += len(frame)
        self.nbytes += size

    def ack(self, received: int) -> bool:
        """The peer received ``received`` data frames in this session; forget
        those. False when the count is impossible (ahead of what was sent)."""
        if received > self.sent or not self.intact:
            return False
        log = self._frames
        while self.acked < received:
            self.nbytes -= len(log.popleft())
            self.acked += 1
        return True

    def unconfirmed(self) -> list[bytes]:
        """What the peer may not have received, in order."""
        return list(self._frames)

    def lose(self) -> None:
        """Drop the unconfirmed frames for good (memory budget): the counts no
        longer allow a resend, and ``ack`` fails from now on."""
        self._frames.clear()
        self.nbytes = 0
        self.intact = False

    def clear(self) -> list[bytes]:
        """Forget everything; returns what was never confirmed."""
        frames = list(self._frames)
        self._frames.clear()
        self.nbytes = 0
        return frames


class Receipts:
    """Data frames received from the peer in this session, and when to ack them."""

    __slots__ = ("acked", "acked_bytes", "received", "received_bytes")

    def __init__(self) -> None:
        self.received = 0
        self.received_bytes = 0
        self.acked = 0  # the count last sent in an __ack, __ping or __pong
        self.acked_bytes = 0

    def count(self, size: int) -> bool:
        """One data frame of ``size`` bytes arrived; True when an ``__ack`` is due."""
        self.received += 1
        self.received_bytes += size
        return (
            self.received - self.acked >= ACK_EVERY_FRAMES
            or self.received_bytes - self.acked_bytes >= ACK_EVERY_BYTES
        )

    def acknowledged(self) -> int:
        """An ack carrying the current count is being sent; returns the count."""
        self.acked = self.received
        self.acked_bytes = self.received_bytes
        return self.received

    @property
    def pending(self) -> bool:
        return self.received != self.acked


class Liveness:
    """Heartbeat decisions from frame counts, one call per tick of the
    heartbeat interval (the shell owns the timer; no clock in here).

    The peer is dead when nothing was received for ``timeout`` (rounded up to
    whole ticks); a ping is due when a tick passed with nothing received or
    nothing sent, so that both sides hear something at least once a tick.
    """

    OK: Final = "ok"
    PING: Final = "ping"
    DEAD: Final = "dead"

    __slots__ = ("_last_rx", "_last_tx", "_silent_ticks", "dead_after_ticks")

    def __init__(self, interval: float, timeout: float) -> None:
        if interval <= 0 or timeout < interval:
            raise ValueError("need 0 < heartbeat interval <= heartbeat timeout")
        self.dead_after_ticks = -(-timeout // interval)  # ceil
        self._last_rx = -1
        self._last_tx = -1
        self._silent_ticks = 0

    def tick(self, received: int, sent: int) -> str:
        rx_idle = received == self._last_rx
        tx_idle = sent == self._last_tx
        self._last_rx, self._last_tx = received, sent
        self._silent_ticks = self._silent_ticks + 1 if rx_idle else 0
        if self._silent_ticks >= self.dead_after_ticks:
            return self.DEAD
        return self.PING if rx_idle or tx_idle else self.OK
