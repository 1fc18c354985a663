"""Type-checked by ``mypy --strict`` in tests/test_typing.py (never run).

``subscribe(model=M)`` yields ``Envelope[M]``: ``envelope.payload`` is an
``M`` and the envelope is still an ``EventEnvelope``. Each ``type: ignore``
below must be needed (strict mode reports unused ones), which proves that the
payload is typed, not ``Any``.
"""

from __future__ import annotations

from typing import Any, assert_type

from pydantic import BaseModel

from alkpubsub import Envelope, EventEnvelope, PubSub, Subscription
from alkpubsub import operators as op


class Point(BaseModel):
    x: int
    y: int


def wire_name(envelope: EventEnvelope) -> str:
    return envelope.topic


async def typed_payloads(pubsub: PubSub) -> int:
    subscription = pubsub.subscribe("point", "1", model=Point)
    assert_type(subscription, Subscription[Point])
    total = 0
    async for envelope in subscription:
        assert_type(envelope, Envelope[Point])
        assert_type(envelope.payload, Point)
        total += envelope.payload.x + envelope.payload.y
        wire_name(envelope)  # an Envelope[M] is an EventEnvelope
        total += envelope.payload.z  # type: ignore[attr-defined]
        name: str = envelope.payload  # type: ignore[assignment]
        total += len(name)
    after = await subscription.next(timeout=1.0)
    assert_type(after.payload, Point)
    return total


async def untyped_payloads(pubsub: PubSub) -> None:
    subscription = pubsub.subscribe("any", "1")
    assert_type(subscription, Subscription[Any])
    async for envelope in subscription:
        assert_type(envelope.payload, Any)
        wire_name(envelope)


async def operators_keep_the_type(pubsub: PubSub) -> None:
    points = pubsub.subscribe("point", "1", model=Point)
    xs = op.map(op.filter(points, lambda e: e.payload.x > 0), lambda e: e.payload.x)
    assert_type(xs, op.Operator[int])
    assert_type(await xs.next(timeout=1.0), int)

    async def quadrant(envelope: Envelope[Point]) -> str:
        return "right" if envelope.payload.x > 0 else "left"

    groups = await op.group_by(op.take(points, 10), quadrant)
    assert_type(groups, dict[str, list[Envelope[Point]]])
    unique = op.dedupe(points, key=quadrant)
    assert_type(unique, op.Operator[Envelope[Point]])
    async with op.take(points, 1) as first:
        assert_type([e.payload async for e in first], list[Point])
