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

from ..core.close import CloseCode
from ..core.envelope import Event, EventEnvelope, make_event
from ..core.errors import (
    InvalidTopicError,
    ReservedTypeError,
    TargetClosedError,
)
from ..pubsub import create_pubsub
from ..target import TypedEventTarget
from .harness import BusHarness, HubLike, SpokeLike
from .helpers import Recorder, publish_all, within

__all__ = ["CoreConformance", "HubConformance", "ReconnectConformance"]


async def _flush_all(targets: list[TypedEventTarget]) -> None:
    for target in dict.fromkeys(targets):  # same object may appear more than once
        await within(target.flush())


async def _open_hub(bus: BusHarness, n: int, **options: Any) -> tuple[HubLike, list[SpokeLike]]:
    """Open a bus whose ``targets[0]`` is a hub and the rest its spokes."""
    hub, *others = await bus.open(n, **options)
    assert isinstance(hub, HubLike), f"{type(hub).__name__} lacks the hub API (HubLike)"
    spokes = [spoke for spoke in others if isinstance(spoke, SpokeLike)]
    assert len(spokes) == len(others), "every other target must be a spoke (SpokeLike)"
    return hub, spokes


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


@pytest.mark.asyncio
class HubConformance:
    """Rules of buses with a hub (``targets[0]``) and spokes: E5, E6, B2/B5/B6
    on the wire, B12. Spokes expose ``spoke_id`` (after ``flush()``) and
    ``stats.received_events`` (data frames received, before listener lookup);
    hubs expose ``subscribers(topic)``."""

    async def test_e5_direct_messages_reach_only_their_spoke(self, bus: BusHarness) -> None:
        """E5/B12: direct:<spoke_id> is for that spoke; others may not subscribe."""
        errors: list[BaseException] = []
        hub, (alice, bob) = await _open_hub(bus, 3, spoke_on_error=errors.append)
        await _flush_all([alice, bob])
        alice_id = alice.spoke_id
        assert alice_id
        assert alice_id != bob.spoke_id
        to_alice, eavesdrop, sentinel = Recorder("alice"), Recorder("bob"), Recorder("sentinel")
        alice.add_event_listener(f"direct:{alice_id}", to_alice)
        bob.add_event_listener(f"direct:{alice_id}", eavesdrop)
        bob.add_event_listener("e5:sentinel", sentinel)
        await _flush_all([alice, bob])
        bob.dispatch_event(make_event("direct", alice_id, "from bob"))
        hub.dispatch_event(make_event("direct", alice_id, "from hub"))
        hub.dispatch_event(make_event("e5", "sentinel"))
        await to_alice.wait_for_count(2)
        await sentinel.wait_for_count(1)
        assert sorted(to_alice.payloads) == ["from bob", "from hub"]
        assert eavesdrop.events == []
        assert any(getattr(exc, "code", None) == "forbidden" for exc in errors)

    async def test_e6_senders_refuse_oversized_envelopes(self, bus: BusHarness) -> None:
        """E6: hub and spoke raise FrameTooLargeError instead of sending."""
        from ..core.errors import FrameTooLargeError

        hub, (spoke,) = await _open_hub(
            bus, 2, hub_max_frame_bytes=1000, spoke_max_frame_bytes=1000
        )
        rec = Recorder()
        spoke.add_event_listener("e6:t", rec)
        await within(spoke.flush())
        for target in (hub, spoke):
            with pytest.raises(FrameTooLargeError):
                target.dispatch_event(make_event("e6", "t", "x" * 2000))
        spoke.dispatch_event(make_event("e6", "t", "small"))
        await rec.wait_for_count(1)
        assert rec.payloads == ["small"]

    async def test_b2_hub_writes_only_subscribed_topics(self, bus: BusHarness) -> None:
        """B2 on the wire: an unsubscribed topic is never written to a spoke."""
        hub, (watcher, publisher) = await _open_hub(bus, 3)
        rec = Recorder()
        watcher.add_event_listener("b2w:yes", rec)
        await _flush_all([watcher, publisher])
        for i in range(5):
            hub.dispatch_event(make_event("b2w", "no", i))
            publisher.dispatch_event(make_event("b2w", "no", i))
        hub.dispatch_event(make_event("b2w", "yes"))
        await rec.wait_for_count(1)
        assert watcher.stats.received_events == 1

    async def test_b5_hub_stops_sending_after_unsubscribe(self, bus: BusHarness) -> None:
        """B5 on the wire: after the last listener is removed and flush()
        returns, the hub sends no frame of that topic to the spoke."""
        hub, (spoke,) = await _open_hub(bus, 2)
        rec, sentinel = Recorder(), Recorder("sentinel")
        spoke.add_event_listener("b5w:t", rec)
        spoke.add_event_listener("b5w:sentinel", sentinel)
        await within(spoke.flush())
        hub.dispatch_event(make_event("b5w", "t"))
        await rec.wait_for_count(1)
        spoke.remove_event_listener("b5w:t", rec)
        await within(spoke.flush())
        assert hub.subscribers("b5w:t") == []
        for i in range(5):
            hub.dispatch_event(make_event("b5w", "t", i))
        hub.dispatch_event(make_event("b5w", "sentinel"))
        await sentinel.wait_for_count(1)
        assert spoke.stats.received_events == 2

    async def test_b6_one_hub_subscription_per_spoke_and_topic(self, bus: BusHarness) -> None:
        """B6: many listeners of one spoke make one subscription on the hub,
        released only with the last listener."""
        hub, (spoke,) = await _open_hub(bus, 2)
        listeners = [Recorder(f"l{i}") for i in range(3)]
        for listener in listeners:
            spoke.add_event_listener("b6w:t", listener)
        await within(spoke.flush())
        assert len(hub.subscribers("b6w:t")) == 1
        for listener in listeners[:2]:
            spoke.remove_event_listener("b6w:t", listener)
        await within(spoke.flush())
        assert len(hub.subscribers("b6w:t")) == 1
        spoke.remove_event_listener("b6w:t", listeners[2])
        await within(spoke.flush())
        assert hub.subscribers("b6w:t") == []

    @pytest.mark.parametrize("asynchronous", [False, True], ids=["sync", "async"])
    async def test_b12_authorize_refuses_subscribe_and_publish(
        self, bus: BusHarness, asynchronous: bool
    ) -> None:
        """B12: a refusal sends __error forbidden and has no other effect."""
        seen: list[tuple[str, str, str]] = []

        def decide(peer: Any, action: str, topic: str) -> bool:
            seen.append((peer.spoke_id, action, topic))
            return not topic.startswith(("secret:", "readonly:" if action == "publish" else "-"))

        async def decide_async(peer: Any, action: str, topic: str) -> bool:
            return decide(peer, action, topic)

        errors: list[BaseException] = []
        hub, (spoke, other) = await _open_hub(
            bus,
            3,
            hub_authorize=decide_async if asynchronous else decide,
            spoke_on_error=errors.append,
        )
        secret, readonly, hub_heard = Recorder("secret"), Recorder("readonly"), Recorder("hub")
        spoke.add_event_listener("secret:1", secret)
        spoke.add_event_listener("readonly:1", readonly)
        hub.add_event_listener("readonly:1", hub_heard)
        await within(spoke.flush())
        other.dispatch_event(make_event("readonly", "1", "refused publish"))
        hub.dispatch_event(make_event("secret", "1", "not for spokes"))
        hub.dispatch_event(make_event("readonly", "1", "allowed"))
        await readonly.wait_for_count(1)
        assert readonly.payloads == ["allowed"]
        assert secret.events == []
        assert hub_heard.payloads == ["allowed"]
        assert {action for _, action, _ in seen} == {"subscribe", "publish"}
        assert all(spoke_id for spoke_id, _, _ in seen)
        assert any(getattr(exc, "code", None) == "forbidden" for exc in errors)

    async def test_b8_slow_consumer_is_cut_off_others_unaffected(self, bus: BusHarness) -> None:
        """B8: past max_buffered_bytes the hub calls on_backpressure and closes
        that connection with TRY_AGAIN_LATER; a healthy spoke gets every event in order."""
        from .harness import HubAndSpokesBus

        assert isinstance(bus, HubAndSpokesBus)
        reported: list[tuple[Any, int]] = []
        limit = 256 * 1024
        hub, (healthy,) = await _open_hub(
            bus,
            2,
            hub_max_buffered_bytes=limit,
            hub_on_backpressure=lambda peer, nbytes: reported.append((peer, nbytes)),
        )
        received = Recorder("healthy")
        healthy.add_event_listener("b8:feed", received)
        await within(healthy.flush())
        stalled = await within(bus.stalled_subscriber(hub, "b8:feed"))
        pad = "x" * 1000
        sent = 0
        # The kernel's buffers absorb a few MB first; bounded at 50,000 events.
        while not reported and sent < 50_000:
            for _ in range(50):
                hub.dispatch_event(make_event("b8", "feed", {"i": sent, "pad": pad}))
                sent += 1
            await within(healthy.flush())  # the healthy spoke keeps up
        hub.dispatch_event(make_event("b8", "feed", {"i": sent}))
        sent += 1
        await received.wait_for_count(sent, timeout=60)
        assert len(reported) == 1, f"backpressure reported {len(reported)} times after {sent}"
        assert reported[0][1] > limit
        assert hub.stats.backpressure_disconnects == 1
        assert [event.detail.payload["i"] for event in received.events] == list(range(sent))
        assert await within(stalled.close_code(), 30) == CloseCode.TRY_AGAIN_LATER
        await stalled.aclose()

    async def test_b11_closing_the_hub(self, bus: BusHarness) -> None:
        """B11 on the hub: aclose() is idempotent, disconnects every spoke, ends
        the hub's subscribe() iterators; then dispatch raises, add/remove are
        no-ops."""
        hub, (spoke,) = await _open_hub(bus, 2, spoke_backoff_initial=5, spoke_backoff_max=5)
        await within(spoke.flush())
        subscription = create_pubsub(hub).subscribe("b11h", "t")
        await within(hub.aclose())
        await within(hub.aclose())
        await within(spoke.wait_disconnected())
        assert [envelope async for envelope in subscription] == []
        with pytest.raises(TargetClosedError):
            hub.dispatch_event(make_event("b11h", "t"))
        hub.add_event_listener("b11h:t", Recorder())
        hub.remove_event_listener("b11h:t", Recorder())


@pytest.mark.asyncio
class ReconnectConformance:
    """B7 for spokes: reconnect by themselves, resubscribe, then send the outbox.
    Needs a ``HubAndSpokesBus`` (``restart_hub``) and spokes with
    ``wait_connected`` / ``wait_disconnected``."""

    async def test_b7_reconnect_resubscribes_then_sends_outbox(self, bus: BusHarness) -> None:
        from .harness import HubAndSpokesBus

        assert isinstance(bus, HubAndSpokesBus)
        hub, (alice, bob) = await _open_hub(
            bus, 3, spoke_backoff_initial=0.05, spoke_backoff_max=0.5
        )
        alice_heard, bob_heard = Recorder("alice"), Recorder("bob")
        alice.add_event_listener("b7:t", alice_heard)
        bob.add_event_listener("b7:t", bob_heard)
        await _flush_all([alice, bob])

        async def while_down() -> None:
            await within(alice.wait_disconnected())
            await within(bob.wait_disconnected())
            for i in range(3):
                alice.dispatch_event(make_event("b7", "t", f"offline-{i}"))

        new_hub = await bus.restart_hub(hub, before_start=while_down)
        hub_heard = Recorder("hub")
        new_hub.add_event_listener("b7:t", hub_heard)
        await within(alice.wait_connected())
        await within(bob.wait_connected())
        expected = [f"offline-{i}" for i in range(3)]
        # alice resubscribed before sending her outbox, so she hears herself.
        await alice_heard.wait_until(lambda r: r.payloads == expected)
        await within(bob.flush())
        new_hub.dispatch_event(make_event("b7", "t", "live"))
        await bob_heard.wait_for_payload("live")
        assert [p for p in bob_heard.payloads if p != "live"] in (expected, [])
        assert hub_heard.payloads[:3] == expected

    async def test_b7_disconnect_reason_carries_the_close_code(self, bus: BusHarness) -> None:
        """A hub's close code reaches the spoke's on_disconnect; it reconnects."""
        from ..core.errors import LinkClosedError

        reasons: list[BaseException | None] = []
        lost = asyncio.Event()

        def on_disconnect(reason: BaseException | None) -> None:
            reasons.append(reason)
            lost.set()

        hub, (spoke,) = await _open_hub(
            bus, 2, spoke_on_disconnect=on_disconnect, spoke_backoff_initial=0.05
        )
        await within(spoke.flush())
        spoke_id = spoke.spoke_id
        assert spoke_id is not None
        assert await within(hub.disconnect_peer(spoke_id, 4001, "maintenance"))
        await within(lost.wait())
        assert isinstance(reasons[0], LinkClosedError)
        assert reasons[0].code == 4001
        await within(spoke.wait_connected())
        await within(spoke.flush())
