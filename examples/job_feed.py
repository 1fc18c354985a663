"""A job-status feed whose code never names a transport.

The transport comes from configuration only: ``$ALKPUBSUB_URL`` (``memory://``
when unset), e.g. ``ws://127.0.0.1:8765/`` or ``iroh://<ticket>`` as printed by
``alkpubsub hub --iroh``.

    python examples/job_feed.py              both roles in one process
    python examples/job_feed.py dashboard    print every job's updates until all are done
    python examples/job_feed.py worker       run the jobs and publish their status

Start the dashboard first (it prints "ready" on stderr once its subscriptions
are live on the whole bus), then the worker.
"""

from __future__ import annotations

import asyncio
import sys

from pydantic import BaseModel

from alkpubsub import PubSub, create_pubsub, operators, transport_from_env

JOBS = ["build", "test", "deploy"]
STEPS = ["queued", "running", "done"]


class JobStatus(BaseModel):
    state: str
    progress: int


async def worker(pubsub: PubSub) -> None:
    for step, state in enumerate(STEPS):
        for job in JOBS:
            progress = 100 * step // (len(STEPS) - 1)
            pubsub.publish(
                "job.status", job, JobStatus(state=state, progress=progress).model_dump()
            )
    await pubsub.flush()  # everything reached the bus before we leave


async def dashboard(pubsub: PubSub, ready: asyncio.Event | None = None) -> None:
    feeds = [pubsub.subscribe("job.status", job, model=JobStatus) for job in JOBS]
    await pubsub.flush()  # the subscriptions are live on the whole bus
    print("ready", file=sys.stderr, flush=True)
    if ready is not None:
        ready.set()
    async for envelope in operators.take(operators.join(*feeds), len(JOBS) * len(STEPS)):
        status: JobStatus = envelope.payload
        print(f"{envelope.id:<7} {status.state:<8} {status.progress:>3}%", flush=True)


async def both() -> None:
    async with create_pubsub(transport_from_env()) as pubsub:
        ready = asyncio.Event()
        watching = asyncio.ensure_future(dashboard(pubsub, ready))
        await ready.wait()
        await worker(pubsub)
        await watching


async def main(role: str) -> None:
    if role == "both":
        await both()
        return
    async with create_pubsub(transport_from_env()) as pubsub:
        await (dashboard(pubsub) if role == "dashboard" else worker(pubsub))


if __name__ == "__main__":
    role = sys.argv[1] if len(sys.argv) > 1 else "both"
    if role not in ("both", "dashboard", "worker"):
        sys.exit(f"usage: {sys.argv[0]} [dashboard|worker]")
    asyncio.run(main(role))
