"""The outgoing frame queue with byte accounting, shared by the spoke's
forwarder and every hub connection (SPEC B7, B8, B13)."""

from __future__ import annotations

from collections import deque

__all__ = ["ControlFrame", "FrameQueue"]


class ControlFrame(bytes):
    """An encoded control frame. Data frames are plain ``bytes``; control frames
    carry this type so that a reconnect can keep the data (the offline outbox)
    and drop control frames, which are regenerated, without a flag per frame on
    the hot path."""

    __slots__ = ()


class FrameQueue:
    """Encoded frames waiting for a link, in order, with their total size."""

    __slots__ = ("_frames", "data_frames", "nbytes")

    def __init__(self) -> None:
        self._frames: deque[bytes] = deque()
        self.nbytes = 0
        self.data_frames = 0

    def __len__(self) -> int:
        return len(self._frames)

    def __bool__(self) -> bool:
        return bool(self._frames)

    def push(self, frame: bytes) -> bool:
        """Append ``frame``; True when the queue was empty before (a writer must wake)."""
        frames = self._frames
        frames.append(frame)
        self.nbytes += len(frame)
        if type(frame) is bytes:
            self.data_frames += 1
        return len(frames) == 1

    def peek(self) -> bytes:
        """The frame at the head (the queue must not be empty)."""
        return self._frames[0]

    def take(self, max_bytes: int | None = None) -> list[bytes]:
        """Remove and return the frames at the head: all of them, or about
        ``max_bytes`` worth (always at least one)."""
        frames = self._frames
        if max_bytes is None or self.nbytes <= max_bytes:
            taken = list(frames)
            frames.clear()
            self.nbytes = 0
            self.data_frames = 0
            return taken
        taken = []
        size = 0
        data = 0
        while frames and (not taken or size + len(frames[0]) <= max_bytes):
            frame = frames.popleft()
            taken.append(frame)
            size += len(frame)
            data += type(frame) is bytes
        self.nbytes -= size
        self.data_frames -= data
        return taken

    def clear(self) -> None:
        self._frames.clear()
        self.nbytes = 0
        self.data_frames = 0

    def keep_data(self) -> None:
        """Drop every control frame, keep data frames in order (a link died)."""
        kept = [frame for frame in self._frames if type(frame) is bytes]
        self._frames = deque(kept)
        self.nbytes = sum(len(frame) for frame in kept)
        self.data_frames = len(kept)

    def data(self) -> list[bytes]:
        """The queued data frames, in order."""
        return [frame for frame in self._frames if type(frame) is bytes]
