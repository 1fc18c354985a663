"""One-memcpy write path for the ``iroh`` bindings, for the hand-written iroh baseline.

The uniffi-generated ``_UniffiRustBufferBuilder.write`` copies its argument one
byte at a time in Python. alkpubsub replaces it with one ``ctypes.memmove``
(docs/iroh.md); the baseline hub and its clients do the same here, so the iroh
comparison is about the hub and not about the FFI copy. Kept self-contained
(the benchmark uses only alkpubsub's public API) and installed only when a
byte-for-byte self-test against the stock method passes.
"""

from __future__ import annotations

import ctypes
import random
from collections.abc import Callable
from typing import Any


def _fast_write(self: Any, value: Any) -> None:
    size = len(value)
    with self._reserve(size):
        if size:
            source = value if isinstance(value, bytes) else bytes(value)
            destination = ctypes.cast(self.rbuf.data, ctypes.c_void_p).value
            assert destination is not None
            ctypes.memmove(destination + self.rbuf.len, source, size)


def _build(builder_class: Any, write: Callable[[Any, Any], None], chunks: list[bytes]) -> bytes:
    builder = builder_class()
    try:
        for chunk in chunks:
            builder.write_i32(len(chunk))
            write(builder, chunk)
        return bytes(builder.rbuf.data[0 : builder.rbuf.len])
    finally:
        builder.discard()


def install() -> bool:
    """Install the fast path if the self-test passes; returns whether it is active."""
    try:
        from iroh import iroh_ffi

        builder_class = iroh_ffi._UniffiRustBufferBuilder
        if builder_class.write is _fast_write:
            return True
        rng = random.Random(1)
        chunks = [bytes(rng.getrandbits(8) for _ in range(n)) for n in (0, 1, 17, 4096, 70_001)]
        if _build(builder_class, builder_class.write, chunks) != _build(
            builder_class, _fast_write, chunks
        ):
            return False
    except Exception:  # the bindings' internals moved: keep the stock code
        return False
    builder_class.write = _fast_write  # type: ignore[method-assign]
    return True
