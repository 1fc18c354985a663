"""Hubs bridged through Redis form one bus (SPEC H6): the conformance suite
on bridged buses, then the bridge's own rules."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from alkpubsub import BackpressureError, get_transport, make_event, transport_from_url
from alkpubsub.core.close import CloseCode
from alkpubsub.core.forwarder import DEFAULT_OUTBOX_LIMIT
from alkpubsub.testing import (
    BridgedBus,
    BusHarness,
    CoreConformance,
    HubConformance,
    Recorder,
    RedisServer,
    within,
)

pytestmark = pytest.mark.usefixtures("redis_server_binary")


class TestBridgedCoreConformance(CoreConformance):
    """Three WebSocket hubs; the first spoke is on another hub than targets[0],
    so every test crosses the bridge."""

    @pytest.fixture
    def bus_harness(self, redis_server_binary: str) -> BusHarness:
        return BridgedBus(("ws", "ws", "ws"), first_spoke_hub=1)


class TestBridgedHubConformance(HubConformance):
    @pytest.fixture
    def bus_harness(self, redis_server_binary: str) -> BusHarness:
        return BridgedBus(("ws", "ws", "ws"), first_spoke_hub=0)


class TestBridgedMixedConformance(CoreConformance):
    """A WebSocket hub and an Iroh hub bridged into one bus."""

    @pytest.fixture
    def bus_harness(self, redis_server_binary: str, loopback_only: None) -> BusHarness:
        return BridgedBus(("ws", "iroh"), first_spoke_hub=1)


class TestBridgedMixedHubConformance(HubConformance):
    @pytest.fixture
    def bus_harness(self, redis_server_binary: str, loopback_only: None) -> BusHarness:
        return BridgedBus(("iroh", "ws"), first_spoke_hub=0)


# -- the bridge's own rules ------------------------------------------------------------------


@pytest_asyncio.fixture
async def bridged() -> AsyncIterator[BridgedBus]:
    bus = BridgedBus(("ws", "ws", "ws"))
    try:
        yield bus
    finally:
        await bus.aclose()


async def spy_on(bus: BridgedBus) -> Any:
    assert bus.server is not None
    return await bus.server.client()


async def numsub(spy: Any, channel: str) -> int:
    [(_, count)] = await spy.pubsub_numsub(channel)
    return int(count)


async def publish_calls(spy: Any) -> int:
    stats = await spy.info("commandstats")
    return int(stats.get("cmdstat_publish", {}).get("calls", 0))


async def flush_all(*targets: Any) -> None:
    for target in targets:
        await within(target.flush())


async def test_h6_interest_based_subscriptions(bridged: BridgedBus) -> None:
    """H6: a hub subscribes on Redis to exactly the topics its connections and
    local listeners want, once per topic (refcounted), and unsubscribes when the
    last interest goes, including when the last interested spoke disconnects."""
    gone = asyncio.Event()
    hub_a, *_ = await bridged.open(1, hub_on_disconnection=lambda peer: gone.set())
    hub_a, hub_b, hub_c = bridged.bus_hubs
    spy = await spy_on(bridged)
    channel = bridged.prefix + "i:t"
    try:
        b1 = await bridged.add_spoke(hub_b)
        b2 = await bridged.add_spoke(hub_b)
        b1.add_event_listener("i:t", Recorder())
        b2.add_event_listener("i:t", Recorder())
        await flush_all(b1, b2)
        assert await numsub(spy, channel) == 1  # hub B once, for two spokes
        local = Recorder("hub a")
        hub_a.add_event_listener("i:t", local)
        await flush_all(hub_a)
        assert await numsub(spy, channel) == 2
        channels = await spy.pubsub_channels(bridged.prefix + "*")
        assert channels == [channel.encode()]  # hub C wants nothing: subscribes nothing
        c_spoke = await bridged.add_spoke(hub_c)
        await flush_all(c_spoke)
        hub_c_received = hub_c.bridge.stats.received
        b1.dispatch_event(make_event("i", "t", "one"))
        await local.wait_for_count(1)
        await flush_all(c_spoke, hub_c)
        assert hub_c.bridge.stats.received == hub_c_received  # no interest, nothing came
        hub_a.remove_event_listener("i:t", local)
        await flush_all(hub_a)
        assert await numsub(spy, channel) == 1
        await b1.aclose()
        await within(gone.wait())
        await flush_all(hub_b)
        assert await numsub(spy, channel) == 1  # b2 still wants it
        gone.clear()
        await b2.aclose()
        await within(gone.wait())
        await flush_all(hub_b)
        assert await numsub(spy, channel) == 0
    finally:
        await spy.aclose()


async def test_h6_no_duplicates_no_loops_with_three_hubs(bridged: BridgedBus) -> None:
    """H6: three hubs, a spoke and a hub listener on each, everyone listening to
    one topic; every event reaches every listener exactly once, and Redis
    carries exactly one PUBLISH per event (nothing is published back)."""
    await bridged.open(1)
    hubs = bridged.bus_hubs
    spokes = [await bridged.add_spoke(hub) for hub in hubs]
    spy = await spy_on(bridged)
    try:
        recorders = []
        for index, target in enumerate([*hubs, *spokes]):
            recorder = Recorder(f"t{index}")
            target.add_event_listener("d:t", recorder)
            recorders.append(recorder)
        await flush_all(*hubs, *spokes)
        publishes_before = await publish_calls(spy)
        per_target = 20
        for index, target in enumerate([*hubs, *spokes]):
            for i in range(per_target):
                target.dispatch_event(make_event("d", "t", {"from": index, "i": i}))
        await flush_all(*spokes, *hubs)
        total = per_target * 6
        for recorder in recorders:
            await recorder.wait_for_count(total)
        sentinel = Recorder("sentinel")
        spokes[0].add_event_listener("d:end", sentinel)
        await flush_all(spokes[0])
        spokes[2].dispatch_event(make_event("d", "end"))
        await sentinel.wait_for_count(1)
        for recorder in recorders:
            keys = [(p["from"], p["i"]) for p in recorder.payloads]
            assert len(keys) == total == len(set(keys)), recorder.name
            for origin in range(6):  # B3: per publisher, in order
                assert [i for f, i in keys if f == origin] == list(range(per_target))
        assert await publish_calls(spy) - publishes_before == total + 1
    finally:
        await spy.aclose()


async def test_h6_hub_restart_spokes_and_redis_subscriptions_come_back(
    bridged: BridgedBus,
) -> None:
    """A bridged hub restarts: its spokes reconnect and resubscribe, and its
    Redis subscriptions come back; the bus is whole again."""
    await check_hub_restart(bridged)


async def test_h6_iroh_hub_restart(redis_server_binary: str, loopback_only: None) -> None:
    """The same with the restarted hub an Iroh hub (same key and port: the
    spokes' ticket stays valid)."""
    bus = BridgedBus(("ws", "iroh", "ws"))
    try:
        await check_hub_restart(bus)
    finally:
        await bus.aclose()


async def check_hub_restart(bridged: BridgedBus) -> None:
    await bridged.open(1)
    hub_a, hub_b, _ = bridged.bus_hubs
    spoke_b = await bridged.add_spoke(hub_b, backoff_initial=0.05, backoff_max=0.5)
    spoke_a = await bridged.add_spoke(hub_a)
    heard = Recorder()
    spoke_b.add_event_listener("r:t", heard)
    await flush_all(spoke_b)
    spy = await spy_on(bridged)
    channel = bridged.prefix + "r:t"
    try:
        assert await numsub(spy, channel) == 1

        async def while_down() -> None:
            await within(spoke_b.wait_disconnected())
            assert await numsub(spy, channel) == 0  # the old hub's connection is gone

        new_hub_b = await bridged.restart_hub(hub_b, before_start=while_down)
        await within(spoke_b.wait_connected())
        await flush_all(spoke_b, new_hub_b)
        assert await numsub(spy, channel) == 1
        spoke_a.dispatch_event(make_event("r", "t", "after restart"))
        await heard.wait_for_payload("after restart")
        assert heard.payloads == ["after restart"]
    finally:
        await spy.aclose()


async def test_h6_redis_restart_local_bus_keeps_serving(bridged: BridgedBus) -> None:
    """Redis killed: each hub keeps serving its local bus and reports the
    outage; Redis back: the bridges reconnect, resubscribe and send what waited."""
    statuses: list[bool] = []
    down, up_again = asyncio.Event(), asyncio.Event()

    def on_status(connected: bool, reason: BaseException | None) -> None:
        statuses.append(connected)
        if not connected:
            down.set()
        elif down.is_set():
            up_again.set()

    await bridged.open(1, hub_on_bridge_status=on_status)
    hub_a, hub_b, _ = bridged.bus_hubs
    a1, a2 = await bridged.add_spoke(hub_a), await bridged.add_spoke(hub_a)
    b1 = await bridged.add_spoke(hub_b)
    local, remote = Recorder("local"), Recorder("remote")
    a2.add_event_listener("x:t", local)
    b1.add_event_listener("x:t", remote)
    await flush_all(a2, b1)
    assert bridged.server is not None
    await within(bridged.server.kill())
    await within(down.wait())
    a1.dispatch_event(make_event("x", "t", "during outage"))
    await local.wait_for_payload("during outage")  # the local bus works
    await within(a1.flush())  # answered at once while the broker is away
    await within(bridged.server.start())
    await within(up_again.wait())
    for hub in bridged.bus_hubs:
        await within(hub.bridge.target.wait_connected())
    # Each bridge resubscribed, then sent its outbox: hub B heard "during
    # outage" at most once (only if its bridge was back first).
    await flush_all(hub_a, hub_b, b1)
    a1.dispatch_event(make_event("x", "t", "after"))
    await remote.wait_for_payload("after")
    assert remote.payloads[-1] == "after"
    assert remote.payloads.count("during outage") <= 1
    assert local.payloads == ["during outage", "after"]
    assert hub_a.bridge.stats.outages == 1


async def test_h6_bridge_outbox_is_bounded(bridged: BridgedBus) -> None:
    """Redis unreachable: bridged publications wait in bounded outboxes; past
    them the hub's own dispatch raises BackpressureError and spoke events are
    delivered locally and counted as dropped; drain() resumes after Redis."""
    await bridged.open(1)
    hub_a, hub_b, _ = bridged.bus_hubs
    assert hub_a.bridge is not None
    hub_a.bridge.max_pending = 20
    spoke_a = await bridged.add_spoke(hub_a)
    remote = Recorder("remote")
    spoke_b = await bridged.add_spoke(hub_b)
    spoke_b.add_event_listener("o:t", remote)
    await flush_all(spoke_b)
    assert bridged.server is not None
    await within(bridged.server.kill())
    await within(hub_a.bridge.target.wait_disconnected())
    accepted = 0
    while accepted < 20_000:
        try:
            hub_a.dispatch_event(make_event("o", "t", accepted))
        except BackpressureError:
            break
        accepted += 1
    assert accepted == DEFAULT_OUTBOX_LIMIT + 20  # the target's outbox, then the bridge's
    local = Recorder("local")
    spoke_a.add_event_listener("o:t", local)
    await flush_all(spoke_a)
    spoke_a.dispatch_event(make_event("o", "t", "spoke"))
    await local.wait_for_payload("spoke")
    assert hub_a.bridge.stats.dropped == 1
    await within(bridged.server.start())
    await within(hub_a.drain(), 30)
    await flush_all(hub_a, hub_b, spoke_b)
    hub_a.dispatch_event(make_event("o", "t", "end"))
    await remote.wait_for_payload("end", timeout=30)
    assert "spoke" not in remote.payloads


async def test_h6_slow_broker_slows_spoke_publishers_down(bridged: BridgedBus) -> None:
    """Redis reachable but slower than a spoke publishes (its PUBLISH commands
    held by CLIENT PAUSE WRITE): hub A stops reading the spoke until its bridge
    outbox drains, the publisher meets BackpressureError and drains, and every
    event crosses the bridge, in order; nothing is dropped."""
    await bridged.open(1)
    hub_a, hub_b, _ = bridged.bus_hubs
    assert hub_a.bridge is not None
    hub_a.bridge.max_pending = 200
    publisher = await bridged.add_spoke(hub_a)
    subscriber = await bridged.add_spoke(hub_b)
    heard = Recorder()
    subscriber.add_event_listener("slow:t", heard)
    await flush_all(subscriber, publisher)
    bridge = hub_a.bridge
    # Redis's PUBLISHes are held until hub A first stops reading its spoke, however
    # long the publisher takes to fill the outboxes on a slow machine; the pause's
    # own end (10 s) only bounds a failure.
    throttling = asyncio.Event()
    relieved = bridge.relieved

    async def spied_relieved() -> None:
        if bridge.congested:
            throttling.set()
        await relieved()

    bridge.relieved = spied_relieved  # type: ignore[method-assign]
    spy = await spy_on(bridged)

    async def unpause_once_throttled() -> None:
        await throttling.wait()
        await spy.execute_command("CLIENT", "UNPAUSE")

    await spy.execute_command("CLIENT", "PAUSE", "10000", "WRITE")
    unpause = asyncio.ensure_future(unpause_once_throttled())
    try:
        # Far more than the target's outbox (1 MiB) and the bridge's (200 events).
        count, sent, waits = 40_000, 0, 0
        while sent < count:
            try:
                publisher.dispatch_event(make_event("slow", "t", sent))
            except BackpressureError:
                waits += 1
                await within(publisher.drain(), 30)
                continue
            sent += 1
        await within(publisher.flush(), 30)
        await heard.wait_for_count(count, timeout=60)
        await within(unpause)
    finally:
        unpause.cancel()
        await asyncio.gather(unpause, return_exceptions=True)
        await spy.aclose()
    assert [e.detail.payload for e in heard.events] == list(range(count))
    assert hub_a.bridge.stats.dropped == 0
    # Paused per congestion (down to a quarter before reading on), not per event.
    assert 0 < hub_a.bridge.stats.throttled < 100
    assert waits > 0  # the publisher felt the backpressure


async def test_h6_a_bridge_target_without_dispatch_encoded_gets_events(
    bridged: BridgedBus,
) -> None:
    """A third-party bridge target need not take encoded envelopes: the bridge
    decodes them for its dispatch_event."""
    await bridged.open(1)
    hub_a, hub_b, _ = bridged.bus_hubs
    assert hub_a.bridge is not None
    hub_a.bridge._dispatch_frame = hub_a.bridge._dispatch_decoded  # as for such a target
    publisher = await bridged.add_spoke(hub_a)
    subscriber = await bridged.add_spoke(hub_b)
    heard = Recorder()
    subscriber.add_event_listener("plain:t", heard)
    await flush_all(subscriber)
    for index in range(3):
        publisher.dispatch_event(make_event("plain", "t", index))
    await heard.wait_for_count(3)
    assert [e.detail.payload for e in heard.events] == [0, 1, 2]


async def test_h6_slow_consumer_of_bridged_traffic_is_cut_off(bridged: BridgedBus) -> None:
    """B8 applies to bridged traffic: a stalled subscriber on hub B is cut off
    when hub A's events pile up for it; a healthy spoke on B gets them all."""
    reported: list[int] = []
    await bridged.open(
        1,
        hub_max_buffered_bytes=256 * 1024,
        hub_on_backpressure=lambda peer, nbytes: reported.append(nbytes),
    )
    hub_a, hub_b, _ = bridged.bus_hubs
    healthy = await bridged.add_spoke(hub_b)
    heard = Recorder()
    healthy.add_event_listener("s:feed", heard)
    await flush_all(healthy)
    stalled = await within(bridged.stalled_subscriber(hub_b, "s:feed"))
    pad = "x" * 1000
    sent = 0
    while not reported and sent < 50_000:
        for _ in range(50):
            hub_a.dispatch_event(make_event("s", "feed", {"i": sent, "pad": pad}))
            sent += 1
        await within(hub_a.flush())
        await within(healthy.flush())
    await heard.wait_for_count(sent, timeout=60)
    assert len(reported) == 1
    assert [e.detail.payload["i"] for e in heard.events] == list(range(sent))
    assert await within(stalled.close_code(), 30) == CloseCode.TRY_AGAIN_LATER
    await stalled.aclose()


async def test_h6_bridge_url_and_cli_hub_that_dies(redis_server_binary: str) -> None:
    """``alkpubsub hub --bridge redis://...`` joins the bus; when that hub
    process dies (SIGKILL), Redis drops its interest and the other hubs go on."""
    async with RedisServer() as server:
        hub = get_transport("ws-hub", port=0, bridge=server.url)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alkpubsub", "hub", "--port", "0", "--bridge", server.url,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        spy = await server.client()
        try:
            assert process.stdout is not None
            cli_url = (await within(process.stdout.readline(), 15)).decode().strip()
            async with hub, transport_from_url(cli_url) as far, transport_from_url(hub.url) as near:
                heard_far, heard_near = Recorder("far"), Recorder("near")
                far.add_event_listener("k:t", heard_far)
                near.add_event_listener("k:t", heard_near)
                await flush_all(far, near)
                assert await numsub(spy, "alkpubsub:k:t") == 2
                near.dispatch_event(make_event("k", "t", 1))
                await heard_far.wait_for_payload(1)
                os.kill(process.pid, signal.SIGKILL)
                await within(process.wait())
                await within(far.wait_disconnected())
                # Redis saw the dead hub's connections close: only ours is left.
                await flush_all(hub)
                for _ in range(100):  # each round trip lets Redis handle the closes
                    if await numsub(spy, "alkpubsub:k:t") == 1:
                        break
                    await within(hub.flush())
                assert await numsub(spy, "alkpubsub:k:t") == 1
                near.dispatch_event(make_event("k", "t", 2))
                await heard_near.wait_for_count(2)
                assert heard_near.payloads == [1, 2]
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await spy.aclose()


async def test_cli_bridge_unreachable_is_one_clear_line(redis_server_binary: str) -> None:
    from alkpubsub.testing.redis import _free_port

    url = f"redis://127.0.0.1:{_free_port()}/0"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alkpubsub", "hub", "--port", "0", "--bridge", url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await within(process.communicate(), 30)
    assert process.returncode == 1
    assert err.decode().count("\n") == 1
    assert "cannot start the bridge" in err.decode()
    assert "127.0.0.1" in err.decode()


async def test_h6_bridged_event_too_large_for_one_hub(redis_server_binary: str) -> None:
    """E6 across hubs with different limits: an envelope larger than the
    receiving hub's max_frame_bytes is counted there and not relayed; the
    next one arrives."""
    from alkpubsub.transports.ws import WebSocketHub

    async with RedisServer() as server:
        big_hub = WebSocketHub(port=0, bridge=server.url)
        small_hub = WebSocketHub(port=0, bridge=server.url, max_frame_bytes=1000)
        async with big_hub, small_hub, transport_from_url(small_hub.url) as spoke:
            heard = Recorder()
            spoke.add_event_listener("big:t", heard)
            await flush_all(spoke)
            big_hub.dispatch_event(make_event("big", "t", "x" * 2000))
            big_hub.dispatch_event(make_event("big", "t", "small"))
            await heard.wait_for_payload("small")
            assert heard.payloads == ["small"]
            assert small_hub.bridge is not None
            # Dropped by the hub's Redis target already (same limit as its hub).
            assert small_hub.bridge.target.redis_stats.oversized == 1  # type: ignore[attr-defined]
            assert small_hub.bridge.stats.received == 1
