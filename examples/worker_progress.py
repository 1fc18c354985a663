"""A CPU-bound job in a worker process that streams progress events back to an
asyncio program, which draws a progress bar and stays responsive meanwhile.

    python examples/worker_progress.py [LIMIT]

The worker counts the primes below LIMIT (default 5,000,000) with a segmented
sieve, one chunk at a time, publishing ``job.progress:primes`` after each chunk
and ``job.result:primes`` at the end. It is a plain coroutine function that
receives its end of the channel, a ``TypedEventTarget``, like any other
transport. The main program subscribes before starting the worker (so its
subscriptions are in effect before the worker's first event), iterates the
progress events until the worker returns, and keeps a clock ticking to show
that its event loop was never blocked by the computation.
"""

from __future__ import annotations

import asyncio
import math
import sys
import time

from alkpubsub import create_pubsub
from alkpubsub.target import TypedEventTarget
from alkpubsub.transports.worker import WorkerHost

CHUNK = 50_000


def base_primes(limit: int) -> list[int]:
    """The primes up to sqrt(limit), which sieve every chunk."""
    root = math.isqrt(limit) + 1
    sieve = bytearray([1]) * (root + 1)
    sieve[0:2] = b"\x00\x00"
    for n in range(2, math.isqrt(root) + 1):
        if sieve[n]:
            sieve[n * n :: n] = bytes(len(range(n * n, root + 1, n)))
    return [n for n in range(root + 1) if sieve[n]]


def count_primes(start: int, stop: int, primes: list[int]) -> int:
    """Primes in [start, stop): pure CPU work."""
    segment = bytearray([1]) * (stop - start)
    for p in primes:
        if p * p >= stop:
            break
        first = max(p * p, (start + p - 1) // p * p)
        segment[first - start :: p] = bytes(len(range(first, stop, p)))
    for n in range(start, min(2, stop)):
        segment[n - start] = 0
    return sum(segment)


async def find_primes(worker: TypedEventTarget, limit: int) -> None:
    """Runs in the worker process."""
    pubsub = create_pubsub(worker)
    primes = base_primes(limit)
    found = 0
    for start in range(0, limit, CHUNK):
        stop = min(start + CHUNK, limit)
        found += count_primes(start, stop, primes)
        pubsub.publish("job.progress", "primes", {"done": stop, "total": limit, "found": found})
        # The worker's event loop writes the event while this coroutine waits;
        # a loop that never awaits would send everything at the end.
        await asyncio.sleep(0)
    pubsub.publish("job.result", "primes", {"limit": limit, "primes": found})


def bar(done: int, total: int, width: int = 30) -> str:
    filled = width * done // total
    return f"[{'#' * filled}{'-' * (width - filled)}] {100 * done // total:3d}%"


async def main(limit: int) -> int:
    # Or get_transport("worker-host", target="mypackage.jobs:find_primes", args=(limit,)).
    worker = WorkerHost(find_primes, args=(limit,))
    pubsub = create_pubsub(worker)
    progress = pubsub.subscribe("job.progress", "primes")
    result = pubsub.subscribe("job.result", "primes")
    ticks = 0

    async def clock() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    interactive = sys.stdout.isatty()
    started = time.perf_counter()
    async with worker:
        ticking = asyncio.create_task(clock())
        shown = -1
        async for envelope in progress:  # ends when the worker returns
            done, total = envelope.payload["done"], envelope.payload["total"]
            found = envelope.payload["found"]
            line = f"{bar(done, total)}  {done:,}/{total:,}  primes so far: {found:,}"
            if interactive:
                print(f"\r{line}", end="", flush=True)
            elif 10 * done // total > shown:  # one line per 10% in a log
                shown = 10 * done // total
                print(line, flush=True)
        ticking.cancel()
        if interactive:
            print()
        reason = await worker.wait_closed()
    if reason is not None:
        print(f"the worker failed: {reason}", file=sys.stderr)
        return 1
    answer = await anext(result)
    elapsed = time.perf_counter() - started
    print(
        f"{answer.payload['primes']:,} primes below {answer.payload['limit']:,} "
        f"in {elapsed:.2f}s; the main loop ticked {ticks} times meanwhile"
    )
    return 0


if __name__ == "__main__":  # required by the spawn start method: the worker re-imports this file
    sys.exit(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000)))
