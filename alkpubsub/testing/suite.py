"""Conformance tests of SPEC §1 and §4, written once for every transport.

Each test cites the rule it checks. Tests never sleep: they wait for events
(``Recorder``) and use ``flush()`` to know a subscription is live (B4). To
prove that something did NOT arrive, they publish a sentinel after it from the
same publisher and wait for the sentinel (per-connection order).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import BaseModel

from ..core.envelope import Event, EventEnvelope, make_event
from ..core.errors import (
    InvalidTopicError,
    ReservedTypeError,
    TargetClosedError,
)
from ..pubsub import create_pubsub
from ..target import TypedEventTarget
from .harness import BusHarness
from .helpers import Recorder, publish_all, within

__all__ = ["CoreConformance"]


async def _flush_all(targets: list[TypedEventTarget]) -> None:
    for target in dict.fromkeys(targets):  # same object may appear more than once
        await within(target.flush())


class _Point(BaseModel):
    x: int
    y: int


@pytest.mark.asyncio
class CoreConformance:
    """Rules every transport satisfies. Needs a ``bus`` fixture (see plugin)."""

    async def test_e1_envelope_roundtrip(self, bus: BusHarness) -> None:
        """E1: type, id and payload arrive intact; payload defaults to None."""
        sub_target, pub_target = await bus.open(2)
        rec = Recorder()
        sub_target.add_event_listener("e1.test:abc", rec)
        await _flush_all([sub_target, pub_target])
        payload = {"n": 1, "s": "ü", "list": [1, 2.5, None, True], "nested": {"k": "v"}}
        pub_target.dispatch_event(make_event("e1.test", "abc", payload))
        pub_target.dispatch_event(make_event("e1.test", "abc"))
        await rec.wait_for_count(2)
        first, second = (event.detail for event in rec.events)
        assert isinstance(first, EventEnvelope)
        assert (first.type, first.id, first.payload) == ("e1.test", "abc", payload)
        assert second.payload is None
        assert rec.events[0].type == "e1.test:abc"

    async def test_e2_listeners_keyed_by_full_topic(self, bus: BusHarness) -> None:
        """E2: a listener on type:id never hears type:other-id."""
        sub_target, pub_target = await bus.open(2)
        rec_1, rec_2 = Recorder("id-1"), Recorder("id-2")
        sub_target.add_event_listener("e2:1", rec_1)
        sub_target.add_event_listener("e2:2", rec_2)
        await _flush_all([sub_target, pub_target])
        pub_target.dispatch_event(make_event("e2", "2", "to-2"))
        pub_target.dispatch_event(make_event("e2", "1", "to-1"))
        await rec_1.wait_for_count(1)
        await rec_2.wait_for_count(1)
        assert rec_1.payloads == ["to-1"]
        assert rec_2.payloads == ["to-2"]

    async def test_e3_invalid_types_rejected_before_sending(self, bus: BusHarness) -> None:
        """E3: bad types raise InvalidTopicError (a ValueError); empty ids are fine."""
        sub_target, pub_target = await bus.open(2)
        for bad in ["", "a:b", "a b", "tab\there", "nl\n", "\x00"]:
            with pytest.raises(InvalidTopicError):
                make_event(bad, "1")
            with pytest.raises(ValueError, match="type"):
                create_pubsub(pub_target).publish(bad, "1", None)
        with pytest.raises(InvalidTopicError):
            sub_target.add_event_listener("no-colon", Recorder())
        rec = Recorder()
        sub_target.add_event_listener("e3.empty:", rec)
        await _flush_all([sub_target, pub_target])
        pub_target.dispatch_event(make_event("e3.empty", "", "ok"))
        await rec.wait_for_count(1)
        assert rec.events[0].detail.id == ""

    async def test_e4_reserved_types_never_sent(self, bus: BusHarness) -> None:
        """E4: '__' types raise ReservedTypeError on publish and dispatch."""
        sub_target, pub_target = await bus.open(2)
        rec = Recorder()
        sub_target.add_event_listener("__subscribe:", rec)
        sub_target.add_event_listener("e4:sentinel", rec)
        await _flush_all([sub_target, pub_target])
        with pytest.raises(ReservedTypeError):
            create_pubsub(pub_target).publish("__subscribe", "", {"topic": "x:y"})
        forged = EventEnvelope.model_construct(type="__subscribe", id="", payload={})
        with pytest.raises(ReservedTypeError):
            pub_target.dispatch_event(Event.from_envelope(forged))
        pub_target.dispatch_event(make_event("e4", "sentinel"))
        await rec.wait_for_count(1)
        assert rec.topics == ["e4:sentinel"]

    async def test_b1_delivered_once_to_every_target(self, bus: BusHarness) -> None:
        """B1: from any target to every listener on every target, exactly once,
        including the dispatching target's own listeners."""
        targets = await bus.open(3)
        recorders = [Recorder(f"t{i}") for i in range(len(targets))]
        for target, rec in zip(targets, recorders, strict=True):
            target.add_event_listener("b1:all", rec)
        await _flush_all(targets)
        for index, target in enumerate(targets):
            target.dispatch_event(make_event("b1", "all", {"from": index, "end": False}))
            target.dispatch_event(make_event("b1", "all", {"from": index, "end": True}))
        ends = len(targets)
        for rec in recorders:
            await rec.wait_until(lambda r: sum(1 for p in r.payloads if p["end"]) == ends)
        for rec in recorders:
            froms = sorted(p["from"] for p in rec.payloads if not p["end"])
            assert froms == list(range(len(targets))), rec.name

    async def test_b2_no_delivery_for_other_topics(self, bus: BusHarness) -> None:
        """B2: nothing arrives for topics a listener did not register."""
        sub_target, pub_target = await bus.open(2)
        rec = Recorder()
        sub_target.add_event_listener("b2:mine", rec)
        await _flush_all([sub_target, pub_target])
        pub_target.dispatch_event(make_event("b2", "other"))
        pub_target.dispatch_event(make_event("b2x", "mine"))
        pub_target.dispatch_event(make_event("b2", "mine", "sentinel"))
        await rec.wait_for_count(1)
        assert rec.topics == ["b2:mine"]

    async def test_b3_order_per_publisher_and_topic(self, bus: BusHarness) -> None:
        """B3: events from one publisher on one topic arrive in publish order."""
        sub_target, pub_target = await bus.open(2)
        rec = Recorder()
        sub_target.add_event_listener("b3:seq", rec)
        await _flush_all([sub_target, pub_target])
        count = 500
        await publish_all(pub_target, (make_event("b3", "seq", i) for i in range(count)))
        await rec.wait_for_count(count)
        assert rec.payloads == list(range(count))

    async def test_b4_flush_makes_subscription_live(self, bus: BusHarness) -> None:
        """B4: after flush() the subscription is in effect for the next dispatch."""
        sub_target, pub_target = await bus.open(2)
        for round_ in range(5):
            rec = Recorder()
            topic_id = f"r{round_}"
            sub_target.add_event_listener(f"b4:{topic_id}", rec)
            await within(sub_target.flush())
            await within(sub_target.flush(timeout=5))
            pub_target.dispatch_event(make_event("b4", topic_id, round_))
            await rec.wait_for_count(1)
            assert rec.payloads == [round_]

    async def test_b5_unsubscribe_stops_delivery(self, bus: BusHarness) -> None:
        """B5: after the last listener is removed and flush() returns, nothing more."""
        sub_target, pub_target = await bus.open(2)
        rec, sentinel = Recorder("removed"), Recorder("sentinel")
        sub_target.add_event_listener("b5:t", rec)
        sub_target.add_event_listener("b5:sentinel", sentinel)
        await _flush_all([sub_target, pub_target])
        pub_target.dispatch_event(make_event("b5", "t", "before"))
        await rec.wait_for_count(1)
        sub_target.remove_event_listener("b5:t", rec)
        await within(sub_target.flush())
        pub_target.dispatch_event(make_event("b5", "t", "after"))
        pub_target.dispatch_event(make_event("b5", "sentinel"))
        await sentinel.wait_for_count(1)
        assert rec.payloads == ["before"]

    async def test_b6_listener_identity_semantics(self, bus: BusHarness) -> None:
        """B6: adding a listener twice is a no-op; removing an unknown or None
        listener is a no-op; None listeners are ignored; the topic stays live
        while another listener remains."""
        sub_target, pub_target = await bus.open(2)
        twice, other = Recorder("twice"), Recorder("other")
        sub_target.add_event_listener("b6:t", twice)
        sub_target.add_event_listener("b6:t", twice)
        sub_target.add_event_listener("b6:t", other)
        sub_target.add_event_listener("b6:t", None)
        sub_target.remove_event_listener("b6:t", None)
        sub_target.remove_event_listener("b6:t", Recorder("unknown"))
        sub_target.remove_event_listener("b6:never", Recorder("unknown"))
        await _flush_all([sub_target, pub_target])
        pub_target.dispatch_event(make_event("b6", "t", 1))
        await other.wait_for_count(1)
        await twice.wait_for_count(1)
        sub_target.remove_event_listener("b6:t", twice)
        await within(sub_target.flush())
        pub_target.dispatch_event(make_event("b6", "t", 2))
        await other.wait_for_count(2)
        assert twice.payloads == [1]
        assert other.payloads == [1, 2]

    async def test_b9_raising_listener_is_isolated(self, bus: BusHarness) -> None:
        """B9: a raising listener is reported and others still receive."""
        errors: list[BaseException] = []
        sub_target, pub_target = await bus.open(
            2, on_listener_error=lambda exc, event, listener: errors.append(exc)
        )

        def broken(event: Event) -> None:
            raise RuntimeError("listener failure")

        rec = Recorder()
        sub_target.add_event_listener("b9:t", broken)
        sub_target.add_event_listener("b9:t", rec)
        await _flush_all([sub_target, pub_target])
        pub_target.dispatch_event(make_event("b9", "t", 1))
        pub_target.dispatch_event(make_event("b9", "t", 2))
        await rec.wait_for_count(2)
        assert rec.payloads == [1, 2]
        assert len(errors) >= 2
        assert all(isinstance(exc, RuntimeError) for exc in errors)

    async def test_b9_coroutine_listeners_run_as_tasks(self, bus: BusHarness) -> None:
        """B9: a coroutine listener is scheduled as a task, never awaited inline,
        so a blocked one does not hold back other listeners or later events."""
        sub_target, pub_target = await bus.open(2)
        gate, all_finished = asyncio.Event(), asyncio.Event()
        finished: list[Any] = []

        async def slow(event: Event) -> None:
            await gate.wait()
            finished.append(event.detail.payload)
            if len(finished) == 2:
                all_finished.set()

        rec = Recorder()
        sub_target.add_event_listener("b9c:t", slow)
        sub_target.add_event_listener("b9c:t", rec)
        await _flush_all([sub_target, pub_target])
        pub_target.dispatch_event(make_event("b9c", "t", 1))
        pub_target.dispatch_event(make_event("b9c", "t", 2))
        await rec.wait_for_count(2)
        assert finished == []
        gate.set()
        await within(all_finished.wait())
        assert sorted(finished) == [1, 2]

    async def test_b11_close_is_final_and_idempotent(self, bus: BusHarness) -> None:
        """B11: aclose() twice is fine; then dispatch raises, add/remove are
        no-ops and live subscribe() iterators end, even one that is waiting."""
        targets = await bus.open(2)
        target, publisher = targets[-1], targets[0]
        subscription = create_pubsub(target).subscribe("b11", "t")
        await _flush_all(targets)
        got_first = asyncio.Event()
        received: list[EventEnvelope] = []

        async def consume() -> None:
            async for envelope in subscription:
                received.append(envelope)
                got_first.set()

        consumer = asyncio.ensure_future(consume())
        publisher.dispatch_event(make_event("b11", "t", "first"))
        await within(got_first.wait())  # the consumer is now waiting for more
        await within(target.aclose())
        await within(target.aclose())
        await within(consumer)
        assert [envelope.payload for envelope in received] == ["first"]
        with pytest.raises(TargetClosedError):
            target.dispatch_event(make_event("b11", "t"))
        target.add_event_listener("b11:t", Recorder())
        target.remove_event_listener("b11:t", Recorder())

    async def test_b13_publisher_backpressure_loses_nothing(self, bus: BusHarness) -> None:
        """B13: dispatch never blocks; a publisher that drains on BackpressureError
        gets every event through, in order."""
        sub_target, pub_target = await bus.open(2)
        rec = Recorder()
        sub_target.add_event_listener("b13:t", rec)
        await _flush_all([sub_target, pub_target])
        count = 5000
        payload = "x" * 200
        sent = await publish_all(
            pub_target, (make_event("b13", "t", {"i": i, "pad": payload}) for i in range(count))
        )
        await within(pub_target.drain())
        assert sent == count
        await rec.wait_for_count(count, timeout=60)
        assert [p["i"] for p in rec.payloads] == list(range(count))

    async def test_pubsub_subscribe_and_model_validation(self, bus: BusHarness) -> None:
        """§6: subscribe() yields envelopes of its topic; with a model, invalid
        payloads are skipped and counted, valid ones parsed."""
        sub_target, pub_target = await bus.open(2)
        subscriber, publisher = create_pubsub(sub_target), create_pubsub(pub_target)
        subscription = subscriber.subscribe("point", "p1", model=_Point)
        await _flush_all([sub_target, pub_target])
        publisher.publish("point", "p1", {"x": 1, "y": 2})
        publisher.publish("point", "p1", {"x": "not a number"})
        publisher.publish("point", "other", {"x": 9, "y": 9})
        publisher.publish("point", "p1", {"x": 3, "y": 4})
        received: list[_Point] = []
        async for envelope in subscription:
            assert isinstance(envelope.payload, _Point)
            received.append(envelope.payload)
            if len(received) == 2:
                break
        assert received == [_Point(x=1, y=2), _Point(x=3, y=4)]
        assert subscription.invalid == 1
