"""The worker transport's bus harness: two symmetric ends of one channel, no hub."""

from __future__ import annotations

import asyncio
from typing import Any

from ..target import TypedEventTarget
from ..transports.worker import WorkerTarget, worker_pair
from .harness import BusHarness

__all__ = ["WorkerBus"]


class WorkerBus(BusHarness):
    """Both ends of a worker channel (``worker_pair``): the code of a host and
    its worker, over real OS pipes with the length-prefixed framing, both in
    the test's process so that the suite can call either end. (Tests with real
    child processes, crashes and kills are in the project's tests/test_worker.py.)

    A bus of two targets: ``open(n)`` returns the ends alternately (``[a, b, a]``
    for 3), as ``MemoryBus`` returns one target ``n`` times. Options go to both.
    """

    name = "worker"

    def __init__(self) -> None:
        self.ends: list[WorkerTarget] = []

    async def open(self, n: int, **options: Any) -> list[TypedEventTarget]:
        a, b = worker_pair(**options)
        self.ends += [a, b]
        await asyncio.gather(a.start(), b.start())
        return [(a, b)[i % 2] for i in range(n)]

    async def aclose(self) -> None:
        for end in self.ends:
            await end.aclose()
        self.ends.clear()
