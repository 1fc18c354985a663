"""Shared by the driver scripts: JSON-line reports on stdout (with the
system-wide monotonic clock, comparable across processes), JSON commands on
stdin, and the description of an error as the tests compare it."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import gc
import json
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any


def report(event: str, **fields: Any) -> None:
    line = json.dumps({"event": event, "at": time.monotonic(), **fields}, default=str)
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def describe(error: BaseException | None) -> dict[str, Any] | None:
    """How a disconnect reason is reported: its class and, for a close, the code."""
    if error is None:
        return None
    return {
        "type": type(error).__name__,
        "code": getattr(error, "code", None),
        "message": str(error)[:300],
    }


async def commands() -> AsyncIterator[dict[str, Any]]:
    """JSON commands from stdin, one a line, until stdin closes."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        yield json.loads(line)


def rss_kib() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def trim() -> int:
    """Collect garbage and give freed heap back to the system (glibc keeps it
    otherwise); returns VmRSS in KiB afterwards."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return rss_kib()


def setup_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("DRIVER_LOG_LEVEL", "WARNING"),
        stream=sys.stderr,
        format="%(relativeCreated)d %(name)s %(levelname)s %(message)s",
    )
