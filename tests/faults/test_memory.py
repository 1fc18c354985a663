"""Issue 9: memory a hub spends on one connection is bounded, and the bound is
the formula of docs/limits.md. Each test runs the hub in a process of its
own and reads its resident memory from /proc (``VmRSS``, and ``VmHWM``, the
peak, reset through ``/proc/PID/clear_refs`` before the attack); the
attackers are raw clients in the test process.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from alkpubsub.core.close import CloseCode
from alkpubsub.testing import within

from .procs import HubProcess
from .raw import RawIroh, RawWs, envelope, hello
from .support import Children, rss_kib

MIB = 1024 * 1024


def reset_peak(pid: int) -> None:
    """``VmHWM`` starts again from the current ``VmRSS`` (proc(5), clear_refs 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def settled_rss(hub: HubProcess) -> int:
    """The hub's RSS in KiB after garbage collection and ``malloc_trim``."""
    return int((await hub.child.ask("trim"))["rss"])  # type: ignore[union-attr]


async def raw_client(transport: str, hub: HubProcess) -> Any:
    if transport == "ws":
        return await RawWs.open(hub.ws_url, max_size=None)
    return await RawIroh.open(hub.ready["ticket"])


def big_frame(payload: Any, type_: str = "big", id_: str = "1") -> bytes:
    return envelope(type_, payload, id_)


#: A payload that costs CPython ~24 times its JSON size once decoded.
DICTS = [{}] * ((1_000_000 - 40) // 3)


async def test_an_idle_connection_does_not_pin_its_last_frame(
    transport: str, children: Children
) -> None:
    """Each connection's read loop kept the last envelope it decoded alive
    while it waited for the next one: a 1 MB frame of empty objects decodes
    to ~24 MB, so a few idle connections pinned hundreds of MB."""
    hub = await HubProcess(transport).start(children)
    assert hub.child is not None
    before = await settled_rss(hub)
    clients = [await raw_client(transport, hub) for _ in range(6)]
    try:
        frame = big_frame(DICTS)
        assert len(frame) < MIB
        for client in clients:
            await client.write_frames(hello(), frame)  # and nothing after it
        async with asyncio.timeout(30):  # each asks the hub, which nothing else signals
            while (await hub.stats())["stats"]["relayed_events"] < len(clients):
                pass
        after = await settled_rss(hub)
    finally:
        for client in clients:
            await client.aclose()
    growth_mib = (after - before) / 1024
    print(f"{transport}: 6 idle connections after a 1 MB frame each: +{growth_mib:.1f} MiB")
    assert growth_mib < 6 * 4  # not 6 x 24 MiB of decoded objects


async def test_big_topics_are_refused_and_memory_stays_flat(
    transport: str, children: Children
) -> None:
    """Defect 2: 300 subscribes of 1 MB topics pinned 287 MiB for good."""
    hub = await HubProcess(transport).start(children)
    assert hub.child is not None
    before = await settled_rss(hub)
    reset_peak(hub.child.pid)
    client = await raw_client(transport, hub)
    try:
        await client.write_frames(hello())
        await client.read_until("__welcome")
        for i in range(300):
            topic = f"big{i}:" + "x" * 1_000_000
            await client.write_frames(envelope("__subscribe", {"topic": topic}))
            error = await client.read_until("__error", timeout=20)
            assert error["payload"]["code"] == "topic_too_long"
        peak = rss_kib(hub.child.pid, "VmHWM")
        after = await settled_rss(hub)
        stats = await hub.stats()
    finally:
        await client.aclose()
    assert stats["stats"]["refused"] == 300
    assert stats["topics"] == 0
    print(
        f"{transport}: 300 topics of 1 MB refused; hub peak +{(peak - before) / 1024:.1f} MiB, "
        f"after +{(after - before) / 1024:.1f} MiB"
    )
    assert after - before < 8 * 1024
    assert peak - before < 16 * 1024  # a few frames in flight, not 300 MB


@pytest.mark.usefixtures("loopback_only")
async def test_iroh_extra_streams_close_the_connection_and_memory_stays_bounded(
    children: Children,
) -> None:
    """Defect 1: every connection could open ~200 more QUIC streams whose
    data the hub buffered (~213 MiB per connection). The first extra stream
    now closes the connection with 1008."""
    hub = await HubProcess("iroh").start(children)
    assert hub.child is not None
    before = await settled_rss(hub)
    reset_peak(hub.child.pid)
    attacker = await RawIroh.open(hub.ready["ticket"])
    chunk = os.urandom(1 << 20)
    opened = 0
    try:
        await attacker.write_frames(hello())
        await attacker.read_until("__welcome")

        async def flood(open_stream: Any, is_bi: bool) -> None:
            nonlocal opened
            for _ in range(200):
                stream = await open_stream()
                send = stream.send() if is_bi else stream
                opened += 1
                await send.write_all(chunk)

        floods = [
            asyncio.ensure_future(flood(attacker.connection.open_bi, True)),
            asyncio.ensure_future(flood(attacker.connection.open_uni, False)),
        ]
        code = await within(attacker.close_code(), 30)
        await asyncio.gather(*floods, return_exceptions=True)
        peak = rss_kib(hub.child.pid, "VmHWM")
        stats = await hub.stats()
    finally:
        await attacker.aclose()
    assert code == CloseCode.POLICY_VIOLATION
    assert stats["refused_streams"] == 1
    print(f"iroh: {opened} extra streams opened, hub peak +{(peak - before) / 1024:.1f} MiB")
    assert peak - before < 32 * 1024  # not ~213 MiB


def formula_mib(transport: str) -> float:
    """docs/limits.md: the worst case of one connection with the default limits, in MiB."""
    from alkpubsub.core.codec import DEFAULT_MAX_FRAME_BYTES as F
    from alkpubsub.core.router import DEFAULT_MAX_BUFFERED_BYTES as B
    from alkpubsub.core.router import DEFAULT_MAX_SUBSCRIPTION_BYTES as S
    from alkpubsub.core.router import DEFAULT_MAX_TOPICS_PER_CONNECTION as N
    from alkpubsub.core.router import DEFAULT_MAX_UNCONFIRMED_BYTES as U
    from alkpubsub.transports.link import WRITE_CHUNK_BYTES as K
    from alkpubsub.transports.ws import RECEIVE_QUEUE_FRAMES as Q

    c0 = 256 * 1024  # objects, tasks, the link's own state (measured 0.1-0.2 MiB)
    o = 400  # per topic: set and dict entries (measured 360-460 bytes)
    w = g = 1_250_000  # QUIC stream receive window, datagram receive buffer
    if transport == "ws":
        receive, send = (Q + 2) * F, B + F
    else:
        receive, send = w + 2 * F + g, B + F + max(K, F) + w
    return (c0 + receive + send + U + S + N * o) / MIB


async def test_the_worst_connection_stays_under_the_documented_bound(
    transport: str, children: Children
) -> None:
    """One connection doing everything that costs the hub memory at once: the
    most topics, a session that never acknowledges (unconfirmed frames kept),
    a reader that stalls (queue and socket buffers to the B8 limit), frames of
    the maximum size sent as fast as the hub takes them; then its link drops
    and its session waits detached."""
    hub = await HubProcess(transport).start(children)
    assert hub.child is not None
    before = await settled_rss(hub)
    reset_peak(hub.child.pid)
    attacker = await raw_client(transport, hub)
    publisher = await raw_client(transport, hub)
    try:
        await attacker.write_frames(hello())  # a session, and no heartbeat promised
        await attacker.read_until("__welcome")
        await publisher.write_frames(hello())
        await publisher.read_until("__welcome")
        topics = [f"w{i:05d}:" + "x" * 93 for i in range(9_999)]
        await attacker.write_frames(
            envelope("__subscribe", {"topic": "big:1"}),
            *(envelope("__subscribe", {"topic": t}) for t in topics),
            envelope("__ping", {}, "subscribed"),
        )
        await attacker.read_until("__pong", timeout=30)
        # ~3.5 MiB the attacker reads and never acknowledges: kept unconfirmed.
        payload = "y" * (MIB - 200)
        for _ in range(3):
            await publisher.write_frames(big_frame(payload))
            await attacker.read_until("big")
        # The largest frames the hub accepts (unknown control frames: ignored).
        for _ in range(8):
            await attacker.write_frames(envelope("__junk", payload))
        # Now it stops reading, while the publisher fills its queue (B8 may
        # cut it off with 1013: then its session waits detached).
        pause(transport, attacker)
        for _ in range(8):
            await publisher.write_frames(big_frame(payload))
        await publisher.write_frames(envelope("__ping", {}, "p"))
        await publisher.read_until("__pong", timeout=30)
        peak_attached = rss_kib(hub.child.pid, "VmHWM")
        stats = await hub.stats()
        # The link drops; the session waits for a resume (grace period).
        await attacker.aclose()
        detached = await hub.stats()
        peak = rss_kib(hub.child.pid, "VmHWM")
    finally:
        await attacker.aclose()
        await publisher.aclose()
    bound = formula_mib(transport)
    print(
        f"{transport}: worst connection: hub peak +{(peak_attached - before) / 1024:.1f} MiB "
        f"attached, +{(peak - before) / 1024:.1f} MiB in all (two connections); "
        f"formula {bound:.1f} MiB per connection; stats {stats['stats']}"
    )
    assert stats["subscriptions"] == 10_000
    assert detached["connections"] == 2  # the attacker's session waits detached
    # Two connections (the attacker and its publisher) fit in twice the bound.
    assert (peak - before) / 1024 < 2 * bound


def pause(transport: str, client: Any) -> None:
    """The client stops reading (its socket or stream fills up)."""
    if transport == "ws":
        client.ws.transport.pause_reading()
    # An Iroh raw client reads only when asked to: not reading is enough.
