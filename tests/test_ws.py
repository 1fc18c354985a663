"""WebSocket transport: reconnect policy, seed-protocol peers, bad input (B10),
slow consumers (B8), life cycle and TLS."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from alkpubsub import ConnectionRefusedByHubError, make_event
from alkpubsub.core.router import Peer
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.ws import HttpRequestInfo, WebSocketHub, WebSocketSpoke


@pytest.fixture
async def hub() -> AsyncIterator[WebSocketHub]:
    async with WebSocketHub(port=0, max_frame_bytes=64 * 1024, max_topics_per_connection=50) as h:
        yield h


async def raw_client(url: str, *, hello: bool = True, **options: Any) -> ClientConnection:
    """A bare client. The hub welcomes a connection when its first frame
    arrives; with ``hello`` that frame is a plain ``__hello`` (no session) and
    the welcome is read here, without it the caller's first frame triggers it."""
    ws = await within(connect(url, compression=None, **options))
    if hello:
        await ws.send(json.dumps({"type": "__hello", "id": "", "payload": {"protocol": 1}}))
        welcome = json.loads(await within(ws.recv()))
        assert welcome["type"] == "__welcome"
    return ws


async def ping(ws: ClientConnection, nonce: str = "n") -> None:
    """Round trip proving that everything sent before was processed (B4)."""
    await ws.send(json.dumps({"type": "__ping", "id": nonce, "payload": {}}))
    while True:
        frame = json.loads(await within(ws.recv()))
        if frame["type"] == "__pong" and frame["id"] == nonce:
            return


async def frames_until_pong(ws: ClientConnection, nonce: str = "n") -> list[dict[str, Any]]:
    await ws.send(json.dumps({"type": "__ping", "id": nonce, "payload": {}}))
    frames = []
    while True:
        frame = json.loads(await within(ws.recv()))
        if frame["type"] == "__pong" and frame["id"] == nonce:
            return frames
        frames.append(frame)


# -- B7: reconnect policy -----------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_b7_refused_spoke_reports_and_backs_off(status: int) -> None:
    attempts: list[float] = []

    def refuse(request: HttpRequestInfo) -> int:
        attempts.append(time.monotonic())
        return status

    errors: list[BaseException] = []
    sixth_refusal = asyncio.Event()

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        if len(errors) >= 6:
            sixth_refusal.set()

    async with WebSocketHub(port=0, authenticate=refuse) as hub:
        spoke = WebSocketSpoke(hub.url, wait_connected=False, on_error=on_error)
        async with spoke:
            await within(sixth_refusal.wait(), 30)
            assert not spoke.connected
    assert all(isinstance(exc, ConnectionRefusedByHubError) for exc in errors)
    assert str(status) in str(errors[0])
    # Equal-jitter backoff from 0.1 s: the gaps before attempts 2..6 are at least
    # 0.05, 0.1, 0.2, 0.4, 0.8 s, so six attempts take at least 1.55 s, i.e. a
    # handful per five seconds rather than a tight loop (thousands per second).
    assert attempts[5] - attempts[0] >= 1.5
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    assert gaps[4] > gaps[0]


async def test_b7_start_fails_cleanly_when_hub_is_down() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens on this port now
    spoke = WebSocketSpoke(f"ws://127.0.0.1:{port}/", connect_timeout=0.5)
    with pytest.raises(ConnectionError, match="could not connect"):
        await spoke.start()
    assert spoke.closed
    assert spoke.connect_attempts >= 1


async def test_b7_offline_start_then_hub_appears() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    url = f"ws://127.0.0.1:{port}/"
    connects: list[int] = []
    spoke = WebSocketSpoke(
        url,
        wait_connected=False,
        backoff_initial=0.05,
        backoff_max=0.2,
        on_connect=lambda: connects.append(1),
    )
    async with spoke:
        heard = Recorder()
        spoke.add_event_listener("offline:t", heard)
        spoke.dispatch_event(make_event("offline", "t", "sent before any hub existed"))
        assert not spoke.connected
        async with WebSocketHub(host="127.0.0.1", port=port):
            await within(spoke.wait_connected())
            await heard.wait_for_count(1)
    assert heard.payloads == ["sent before any hub existed"]
    assert connects == [1]


async def test_spoke_lifecycle_callbacks(hub: WebSocketHub) -> None:
    events: list[str] = []
    disconnected = asyncio.Event()

    def on_disconnect(reason: BaseException | None) -> None:
        events.append("disconnect")
        disconnected.set()

    spoke = WebSocketSpoke(
        hub.url,
        on_connect=lambda: events.append("connect"),
        on_disconnect=on_disconnect,
        backoff_initial=0.05,
    )
    async with spoke:
        await within(spoke.flush())
        assert spoke.spoke_id is not None
        (peer,) = hub.peers
        await within(hub.disconnect_peer(peer.spoke_id))
        await within(disconnected.wait())
        await within(spoke.wait_connected())
        await within(spoke.flush())
    assert events == ["connect", "disconnect", "connect"]


# -- C2: a peer that speaks only the bare seed protocol ----------------------------------


async def test_c2_bare_seed_protocol_peer_interoperates(hub: WebSocketHub) -> None:
    ready = Recorder("ready")
    hub.add_event_listener("ready:seed", ready)
    async with WebSocketSpoke(hub.url) as spoke:
        heard_from_seed = Recorder("from-seed")
        spoke.add_event_listener("seed.out:1", heard_from_seed)
        await within(spoke.flush())
        seed = await raw_client(hub.url, hello=False)  # no __hello, never pings
        await seed.send(
            json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": "seed.in:1"}})
        )
        await seed.send(json.dumps({"type": "ready", "id": "seed", "payload": None}))
        await ready.wait_for_count(1)  # frames are handled in order: subscribed now
        # Its first frame made the hub welcome it (a seed peer ignores that).
        assert json.loads(await within(seed.recv()))["type"] == "__welcome"
        spoke.dispatch_event(make_event("seed.in", "1", {"n": 1}))
        message = json.loads(await within(seed.recv()))
        assert message == {"type": "seed.in", "id": "1", "payload": {"n": 1}}
        await seed.send(json.dumps({"type": "seed.out", "id": "1", "payload": "hi"}))
        await heard_from_seed.wait_for_count(1)
        assert heard_from_seed.payloads == ["hi"]
        await seed.send(
            json.dumps({"type": "__unsubscribe", "id": "", "payload": {"topic": "seed.in:1"}})
        )
        await seed.send(json.dumps({"type": "ready", "id": "seed", "payload": None}))
        await ready.wait_for_count(2)
        assert hub.subscribers("seed.in:1") == []
        await seed.close()


# -- B10: bad input over a raw socket --------------------------------------------------


BAD_MESSAGES: dict[str, tuple[str | bytes, str]] = {
    "invalid json": ("{not json", "invalid_frames"),
    "json array": ("[1, 2, 3]", "invalid_frames"),
    "json string": ('"just a string"', "invalid_frames"),
    "missing id": ('{"type": "t"}', "invalid_frames"),
    "mistyped id": ('{"type": "t", "id": 5}', "invalid_frames"),
    "mistyped type": ('{"type": ["t"], "id": "1"}', "invalid_frames"),
    "bad type": ('{"type": "a b", "id": "1"}', "invalid_frames"),
    "unknown control": ('{"type": "__shutdown", "id": "", "payload": {}}', "unknown_control"),
    "reserved data type": ('{"type": "__t", "id": "1", "payload": 1}', "unknown_control"),
    "subscribe bad topic": (
        '{"type": "__subscribe", "id": "", "payload": {"topic": "no colon"}}',
        "invalid_control",
    ),
    "subscribe no topic": ('{"type": "__subscribe", "id": "", "payload": {}}', "invalid_control"),
    "subscribe number": (
        '{"type": "__subscribe", "id": "", "payload": {"topic": 7}}',
        "invalid_control",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MESSAGES))
async def test_b10_bad_messages_are_dropped_and_counted(hub: WebSocketHub, case: str) -> None:
    message, counter = BAD_MESSAGES[case]
    async with WebSocketSpoke(hub.url) as good:
        heard = Recorder()
        good.add_event_listener("t:1", heard)
        good.add_event_listener("__t:1", heard)
        await within(good.flush())
        bad = await raw_client(hub.url)
        before = getattr(hub.stats, counter)
        await bad.send(message)
        # Still served, nothing relayed, and told why (unknown control: C2, silent).
        complaints = {"invalid_frames": ["invalid_frame"], "invalid_control": ["invalid_control"]}
        frames = await frames_until_pong(bad)
        assert [f["payload"]["code"] for f in frames] == complaints.get(counter, [])
        assert all(f["type"] == "__error" for f in frames)
        assert getattr(hub.stats, counter) == before + 1
        hub.dispatch_event(make_event("t", "1", "still flowing"))
        await heard.wait_for_count(1)
        assert heard.payloads == ["still flowing"]
        await bad.close()


async def test_b10_invalid_utf8_text_frame_closes_with_1007(hub: WebSocketHub) -> None:
    """RFC 6455: invalid UTF-8 in a text frame fails the connection with 1007,
    as ASGI servers and aiohttp do for mounted hubs; it is counted, and only
    that connection ends."""
    async with WebSocketSpoke(hub.url) as good:
        heard = Recorder()
        good.add_event_listener("t:1", heard)
        await within(good.flush())
        bad = await raw_client(hub.url)
        await bad.send(b'{"type":"t","id":"\xff\xfe"}', text=True)
        with pytest.raises(ConnectionClosed):
            await within(bad.recv())
        assert bad.close_code == 1007
        hub.dispatch_event(make_event("t", "1", "still flowing"))
        await heard.wait_for_count(1)
        assert hub.stats.invalid_frames == 1


async def test_b10_invalid_utf8_in_a_binary_frame_is_dropped(hub: WebSocketHub) -> None:
    bad = await raw_client(hub.url)
    await bad.send(b'{"type":"t","id":"\xff\xfe"}')
    (complaint,) = await frames_until_pong(bad)
    assert complaint["payload"]["code"] == "invalid_frame"
    assert hub.stats.invalid_frames == 1
    await bad.close()


async def test_f1_binary_message_with_json_is_accepted(hub: WebSocketHub) -> None:
    heard = Recorder()
    hub.add_event_listener("bin:1", heard)
    client = await raw_client(hub.url)
    await client.send(b'{"type":"bin","id":"1","payload":true}')
    await heard.wait_for_count(1)
    await client.close()


async def test_b10_oversized_frame_closes_only_that_connection(hub: WebSocketHub) -> None:
    async with WebSocketSpoke(hub.url) as good:
        heard = Recorder()
        good.add_event_listener("t:1", heard)
        await within(good.flush())
        bad = await raw_client(hub.url, max_size=None)
        await bad.send(json.dumps({"type": "t", "id": "1", "payload": "x" * 100_000}))
        with pytest.raises(ConnectionClosed):
            await within(bad.recv())
        assert bad.close_code == 1009
        hub.dispatch_event(make_event("t", "1", "still flowing"))
        await heard.wait_for_count(1)
        assert heard.payloads == ["still flowing"]


async def test_b10_subscription_flood_is_capped(hub: WebSocketHub) -> None:
    flooder = await raw_client(hub.url)
    for i in range(60):
        await flooder.send(
            json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": f"f:{i}"}})
        )
    frames = await frames_until_pong(flooder)
    assert [f["payload"]["code"] for f in frames] == ["too_many_topics"] * 10
    assert sum(len(hub.subscribers(f"f:{i}")) for i in range(60)) == 50
    await flooder.close()


async def test_b10_garbage_never_reaches_listeners_and_hub_survives(hub: WebSocketHub) -> None:
    seen = Recorder()
    hub.add_event_listener("t:1", seen)
    bad = await raw_client(hub.url)
    for message in ["", "null", "{}", "\x00\x01", '{"type":"t","id":"1","payload":1']:
        await bad.send(message)
    await bad.send('{"type":"t","id":"1","payload":"ok"}')
    await seen.wait_for_count(1)
    assert seen.payloads == ["ok"]
    assert hub.stats.invalid_frames == 5
    await bad.close()


# -- B8: slow consumers ---------------------------------------------------------------


async def test_b8_stalled_spoke_is_cut_off_and_others_keep_low_latency() -> None:
    backpressured: list[tuple[Peer, int]] = []
    gone: list[Peer] = []
    stalled_gone = asyncio.Event()

    def on_disconnection(peer: Peer) -> None:
        gone.append(peer)
        stalled_gone.set()

    limit = 256 * 1024
    async with WebSocketHub(
        port=0,
        max_buffered_bytes=limit,
        on_backpressure=lambda peer, nbytes: backpressured.append((peer, nbytes)),
        on_disconnection=on_disconnection,
    ) as hub:
        host, port = hub.url.split("//")[1].rstrip("/").split(":")
        # The stalled spoke: a tiny receive buffer and reading paused.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        stalled = await raw_client(hub.url, sock=sock)
        await stalled.send(
            json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": "feed:1"}})
        )
        await ping(stalled)
        stalled_peer = next(p for p in hub.peers)
        stalled.transport.pause_reading()

        latencies: list[float] = []

        def on_event(event: Any) -> None:
            latencies.append(time.perf_counter() - event.detail.payload["t"])

        async with WebSocketSpoke(hub.url) as healthy:
            received = Recorder()
            healthy.add_event_listener("feed:1", on_event)
            healthy.add_event_listener("feed:1", received)
            await within(healthy.flush())
            # Publish until the hub gives up on the stalled spoke (the kernel's
            # loopback buffers absorb a few MB first); bounded at 20,000 events.
            pad = "x" * 1000
            count = 0
            while not backpressured and count < 20_000:
                for _ in range(50):
                    payload = {"i": count, "t": time.perf_counter(), "p": pad}
                    hub.dispatch_event(make_event("feed", "1", payload))
                    count += 1
                # Let the healthy spoke read between bursts, as real publishers do.
                await within(healthy.flush())
            for _ in range(100):  # and the bus goes on afterwards
                hub.dispatch_event(make_event("feed", "1", {"i": count, "t": time.perf_counter()}))
                count += 1
            await received.wait_for_count(count, timeout=30)
            await within(stalled_gone.wait())

        assert [p.spoke_id for p, _ in backpressured] == [stalled_peer.spoke_id]
        assert backpressured[0][1] > limit
        assert gone[0].spoke_id == stalled_peer.spoke_id
        assert hub.stats.backpressure_disconnects == 1
        assert [e.detail.payload["i"] for e in received.events] == list(range(count))
        latencies.sort()
        # Normal latency on loopback is well under a millisecond per hop; a
        # healthy spoke held back by the stalled one would see seconds.
        assert latencies[len(latencies) // 2] < 0.1
        assert latencies[-1] < 1.0
        stalled.transport.resume_reading()
        assert await within(read_until_closed(stalled))


async def read_until_closed(ws: ClientConnection) -> bool:
    try:
        while True:
            await ws.recv()
    except ConnectionClosed:
        return True


# -- TLS ----------------------------------------------------------------------------------


async def test_tls_hub_and_spoke() -> None:
    import trustme

    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with WebSocketHub(port=0, ssl=server_context) as hub:
        assert hub.url.startswith("wss://127.0.0.1:")
        async with WebSocketSpoke(hub.url, ssl=client_context) as spoke:
            heard = Recorder()
            spoke.add_event_listener("tls:1", heard)
            await within(spoke.flush())
            hub.dispatch_event(make_event("tls", "1", "secret"))
            await heard.wait_for_count(1)


async def test_hub_serves_only_its_path(hub: WebSocketHub) -> None:
    from websockets.exceptions import InvalidStatus

    with pytest.raises(InvalidStatus) as info:
        await within(connect(hub.url + "elsewhere"))
    assert info.value.response.status_code == 404


async def test_authenticate_sees_headers_and_may_accept() -> None:
    seen: list[HttpRequestInfo] = []

    async def check(request: HttpRequestInfo) -> bool:
        seen.append(request)
        return request.headers.get("authorization") == "Bearer good"

    async with WebSocketHub(port=0, authenticate=check) as hub:
        async with WebSocketSpoke(hub.url, headers={"Authorization": "Bearer good"}) as spoke:
            await within(spoke.flush())
        bad = WebSocketSpoke(hub.url, headers={"Authorization": "Bearer bad"}, connect_timeout=1)
        with pytest.raises(ConnectionError):
            await bad.start()
    assert seen[0].remote_address is not None


def test_dispatch_between_runs_of_the_loop_is_written_when_it_runs_again() -> None:
    """A program that drives its loop step by step (run_until_complete) may
    publish while the loop is not running: the spoke queues the event and
    writes it on the link's loop, without needing a running loop. (Both
    backends: this module runs on each.)"""
    loop = asyncio.new_event_loop()
    try:
        hub = WebSocketHub(port=0)
        loop.run_until_complete(within(hub.start()))
        publisher = WebSocketSpoke(hub.url)
        listener = WebSocketSpoke(hub.url)
        heard = Recorder()
        listener.add_event_listener("step:1", heard)
        for spoke in (publisher, listener):
            loop.run_until_complete(within(spoke.start()))
        loop.run_until_complete(within(listener.flush()))
        publisher.dispatch_event(make_event("step", "1", "between runs"))  # loop not running
        loop.run_until_complete(heard.wait_for_payload("between runs"))
        assert heard.payloads == ["between runs"]
        for target in (publisher, listener, hub):
            loop.run_until_complete(within(target.aclose()))
    finally:
        loop.close()
