"""B7 for symmetric targets on a broker (Redis): the broker goes down and comes
back; the targets reconnect by themselves, resubscribe every live topic, and
only then send what waited in their outbox.

``ReconnectConformance`` restarts a hub and listens on the new hub; a broker bus
has no hub target (the broker is a server the harness stops and starts), so this
class states the same rule for it. Needs a ``BrokerBus`` harness.
"""

from __future__ import annotations

import asyncio

import pytest

from ..core.envelope import make_event
from ..target import TypedEventTarget
from ..transports.bridge import BridgeTarget
from .harness import BusHarness
from .helpers import Recorder, within
from .redis import BrokerBus

__all__ = ["BrokerReconnectConformance"]


def reconnecting(target: TypedEventTarget) -> BridgeTarget:
    """A broker bus's target, which reports its connection (``wait_connected``)."""
    assert isinstance(target, BridgeTarget), f"{target!r} cannot report its connection"
    return target


@pytest.mark.asyncio
class BrokerReconnectConformance:
    async def test_b7_broker_restart_resubscribes_then_sends_outbox(self, bus: BusHarness) -> None:
        """B7: after the broker restarts, a target resubscribes before it sends
        its offline outbox, so it hears its own offline events, in order; another
        target hears them at most once, in order (at-most-once while it was
        itself reconnecting)."""
        assert isinstance(bus, BrokerBus)
        alice, bob = await bus.open(2, backoff_initial=0.05, backoff_max=0.5)
        alice_heard, bob_heard = Recorder("alice"), Recorder("bob")
        alice.add_event_listener("b7:t", alice_heard)
        bob.add_event_listener("b7:t", bob_heard)
        for target in (alice, bob):
            await within(target.flush())

        async def while_down() -> None:
            await within(reconnecting(alice).wait_disconnected())
            await within(reconnecting(bob).wait_disconnected())
            for i in range(3):
                alice.dispatch_event(make_event("b7", "t", f"offline-{i}"))

        await within(bus.restart_broker(before_start=while_down), 30)
        await within(reconnecting(alice).wait_connected())
        await within(reconnecting(bob).wait_connected())
        expected = [f"offline-{i}" for i in range(3)]
        await alice_heard.wait_until(lambda r: r.payloads == expected)
        await within(bob.flush())
        alice.dispatch_event(make_event("b7", "t", "live"))
        await bob_heard.wait_for_payload("live")
        before_live = bob_heard.payloads[:-1]
        assert before_live == expected[len(expected) - len(before_live) :]

    async def test_b7_broker_loss_reported_then_reconnects(self, bus: BusHarness) -> None:
        """A lost broker reaches on_disconnect with a reason; the target
        reconnects by itself and its subscriptions work again."""
        assert isinstance(bus, BrokerBus)
        reasons: list[BaseException | None] = []
        lost = asyncio.Event()

        def on_disconnect(reason: BaseException | None) -> None:
            reasons.append(reason)
            lost.set()

        listener, publisher = await bus.open(
            2, on_disconnect=on_disconnect, backoff_initial=0.05, backoff_max=0.5
        )
        heard = Recorder()
        listener.add_event_listener("b7r:t", heard)
        await within(listener.flush())
        await within(bus.restart_broker(), 30)
        await within(lost.wait())
        assert isinstance(reasons[0], ConnectionError)
        await within(reconnecting(listener).wait_connected())
        await within(reconnecting(publisher).wait_connected())
        await within(listener.flush())
        publisher.dispatch_event(make_event("b7r", "t", "after"))
        await heard.wait_for_payload("after")
        assert heard.payloads == ["after"]
