"""Optional fast path for the bytes the ``iroh`` bindings copy into Rust buffers.

The uniffi-generated ``_UniffiRustBufferBuilder.write`` copies its argument one
byte at a time in a Python loop (about 116 ns per byte here), which caps an
iroh hub near 8.6 MB/s per core. This module replaces that one method with a
single ``ctypes.memmove``. It is installed only when:

- the installed ``iroh`` is exactly the version the replacement was checked
  against (the generated code can change with any release),
- a byte-for-byte self-test against the stock method passes at first use,
- the user did not switch it off (``ALKPUBSUB_IROH_FAST_WRITE=0``, or
  ``fast_write=False`` on the Iroh transports).

Otherwise the stock code stays in place; the result is logged. The patch is
process-wide (it is a method of the bindings' class), which is harmless
because the self-test proved it writes exactly the same bytes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Final

__all__ = ["CHECKED_IROH_VERSION", "ENV_SWITCH", "fast_write_active", "install_fast_write"]

logger = logging.getLogger(__name__)

CHECKED_IROH_VERSION: Final = "1.2.0"
ENV_SWITCH: Final = "ALKPUBSUB_IROH_FAST_WRITE"

_stock_write: Callable[[Any, Any], None] | None = None
_active = False
_verdict: str | None = None


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
        rbuf = builder.rbuf
        return bytes(rbuf.data[0 : rbuf.len])
    finally:
        builder.discard()


def _self_test(builder_class: Any, stock: Callable[[Any, Any], None]) -> bool:
    rng = random.Random(1)
    sizes = [0, 1, 3, 15, 16, 17, 255, 4096, 70_001]
    chunks = [bytes(rng.getrandbits(8) for _ in range(size)) for size in sizes]
    chunks.append(bytearray(b"bytearray input"))  # type: ignore[arg-type]
    chunks.append(memoryview(b"memoryview input"))  # type: ignore[arg-type]
    return _build(builder_class, stock, chunks) == _build(builder_class, _fast_write, chunks)


def install_fast_write(enabled: bool = True) -> bool:
    """Install the fast path if allowed and safe; returns whether it is active."""
    global _active, _stock_write, _verdict
    if not enabled or os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no"):
        uninstall_fast_write()
        return False
    if _active:
        return True
    if _verdict is not None:  # a previous attempt found it unsafe
        return False
    try:
        installed = version("iroh")
    except PackageNotFoundError:
        installed = "missing"
    if installed != CHECKED_IROH_VERSION:
        _verdict = f"iroh {installed} is not the checked {CHECKED_IROH_VERSION}"
        logger.info("iroh fast write path not used: %s", _verdict)
        return False
    try:
        from iroh import iroh_ffi

        builder_class = iroh_ffi._UniffiRustBufferBuilder
        stock = builder_class.write
        if not _self_test(builder_class, stock):
            _verdict = "self-test mismatch"
            logger.warning("iroh fast write path not used: %s", _verdict)
            return False
    except Exception as exc:  # the bindings' internals moved: keep the stock code
        _verdict = f"self-test failed: {exc!r}"
        logger.warning("iroh fast write path not used: %s", _verdict)
        return False
    _stock_write = stock
    setattr(builder_class, "write", _fast_write)  # noqa: B010 - patching a method
    _active = True
    logger.debug("iroh fast write path installed")
    return True


def uninstall_fast_write() -> None:
    """Restore the stock method (used when the user switches the path off)."""
    global _active
    if _active and _stock_write is not None:
        from iroh import iroh_ffi

        setattr(iroh_ffi._UniffiRustBufferBuilder, "write", _stock_write)  # noqa: B010
    _active = False


def fast_write_active() -> bool:
    return _active
