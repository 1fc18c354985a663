"""Envelope <-> bytes, and the length-prefixed stream framing of SPEC F2/F3.

Pure functions and one small state machine; no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from pydantic import ValidationError
from pydantic_core import PydanticSerializationError

from .close import CloseCode
from .envelope import EventEnvelope
from .errors import DecodeError, FrameTooLargeError, FramingError, InvalidEnvelopeError

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "LENGTH_PREFIX_BYTES",
    "FrameDecoder",
    "decode_envelope",
    "encode_envelope",
    "pack_frames",
    "prefix_frame",
]

DEFAULT_MAX_FRAME_BYTES: Final = 1024 * 1024
LENGTH_PREFIX_BYTES: Final = 4
_MAX_PREFIX_VALUE: Final = 2**32 - 1

_serializer = EventEnvelope.__pydantic_serializer__
_validate_json = EventEnvelope.__pydantic_validator__.validate_json


def encode_envelope(
    envelope: EventEnvelope, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> bytes:
    """Compact UTF-8 JSON of ``envelope``; ``FrameTooLargeError`` past the limit (E6)."""
    try:
        data = _serializer.to_json(envelope)
    except PydanticSerializationError as exc:
        raise InvalidEnvelopeError(f"payload is not JSON-serializable: {exc}") from None
    if len(data) > max_frame_bytes:
        raise FrameTooLargeError(len(data), max_frame_bytes)
    return data


#: ``decode_envelope`` for hot paths that need no error message: it raises
#: pydantic's ``ValidationError`` instead of ``DecodeError``.
validate_envelope_json: Final = _validate_json


def decode_envelope(data: bytes | bytearray | str) -> EventEnvelope:
    """Parse one envelope; ``DecodeError`` for anything that is not one (B10)."""
    try:
        envelope: EventEnvelope = _validate_json(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        where = ".".join(str(part) for part in first["loc"]) or "<root>"
        raise DecodeError(f"invalid envelope at {where}: {first['msg']}") from None
    return envelope


def prefix_frame(data: bytes) -> bytes:
    """``data`` preceded by its 4-byte big-endian length (F2)."""
    return len(data).to_bytes(LENGTH_PREFIX_BYTES, "big") + data


def pack_frames(frames: Iterable[bytes]) -> bytes:
    """Pack many frames into one buffer for a single write (F3)."""
    parts: list[bytes] = []
    for frame in frames:
        parts.append(len(frame).to_bytes(LENGTH_PREFIX_BYTES, "big"))
        parts.append(frame)
    return b"".join(parts)


class FrameDecoder:
    """Sans-I/O splitter for the length-prefixed stream format (F2/F3).

    Feed it chunks of any size; it returns every whole frame they complete.
    A zero length or one above ``max_frame_bytes`` raises ``FramingError``
    (the connection must then be closed: the stream cannot be resynchronised);
    the whole frames that the same chunk completed before it are in its ``frames``.
    """

    __slots__ = ("_buffer", "_failed", "_max_frame_bytes")

    def __init__(self, max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
        if not 0 < max_frame_bytes <= _MAX_PREFIX_VALUE:
            raise ValueError(f"max_frame_bytes must be in 1..{_MAX_PREFIX_VALUE}")
        self._buffer = bytearray()
        self._max_frame_bytes = max_frame_bytes
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet form a whole frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[bytes]:
        if self._failed:
            raise FramingError("decoder already failed; the stream cannot be resynchronised")
        buffer = self._buffer
        buffer += chunk
        frames: list[bytes] = []
        offset = 0
        end = len(buffer)
        limit = self._max_frame_bytes
        while end - offset >= LENGTH_PREFIX_BYTES:
            size = int.from_bytes(buffer[offset : offset + LENGTH_PREFIX_BYTES], "big")
            if size == 0 or size > limit:
                self._failed = True
                kind = "zero-length frame" if size == 0 else f"frame of {size} bytes"
                raise FramingError(
                    f"{kind} violates framing (max_frame_bytes={limit})",
                    close_code=CloseCode.PROTOCOL_ERROR if size == 0 else CloseCode.MESSAGE_TOO_BIG,
                    frames=frames,
                )
            start = offset + LENGTH_PREFIX_BYTES
            if end - start < size:
                break
            frames.append(bytes(buffer[start : start + size]))
            offset = start + size
        if offset:
            del buffer[:offset]
        return frames

    def at_frame_boundary(self) -> bool:
        """True when no partial frame is pending (a clean end of stream)."""
        return not self._buffer
