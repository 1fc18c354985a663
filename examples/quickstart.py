"""The smallest alkpubsub program: publish and subscribe on the in-process bus.

Run: python examples/quickstart.py
Swap the transport with configuration only, e.g. ALKPUBSUB_URL=ws://127.0.0.1:8765/
"""

from __future__ import annotations

import asyncio

from alkpubsub import create_pubsub, transport_from_env


async def main() -> None:
    async with create_pubsub(transport_from_env()) as pubsub:
        updates = pubsub.subscribe("job.status", "job-42")
        await pubsub.flush()  # the subscription is live everywhere on the bus
        for state in ("queued", "running", "done"):
            pubsub.publish("job.status", "job-42", {"state": state})
        async for envelope in updates:
            print(envelope.model_dump_json())
            if envelope.payload["state"] == "done":
                break


if __name__ == "__main__":
    asyncio.run(main())
