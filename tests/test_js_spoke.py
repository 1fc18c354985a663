"""The JavaScript spoke (alkpubsub/static/alkpubsub.js) against the real Python hub.

Every rule runs twice through the ``js`` fixture: in Node (with the ``ws`` package)
and in Debian's Chromium (driven by playwright-core), with the JS spoke as a user
would load it. Python spokes and the hub's own listeners are on the same bus.
Rule ids (SPEC §4) are in the test names.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import itertools
import json
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.typing import Subprotocol

from alkpubsub import make_event
from alkpubsub.core.router import Peer
from alkpubsub.testing import Recorder, publish_all, within
from alkpubsub.transports.ws import SUBPROTOCOL, HttpRequestInfo, WebSocketHub, WebSocketSpoke

from .js_support import JS_DIR, TIMEOUT, JsCommandError, JsDriver, require_js, static_dir

BIG = 500 * 1024


@pytest_asyncio.fixture
async def hub() -> AsyncIterator[WebSocketHub]:
    async with WebSocketHub(port=0) as hub:
        yield hub


async def spawn(js: JsDriver, spoke: str, url: str, **options: Any) -> str:
    """A JS spoke, connected and welcomed; returns its spoke id."""
    await js.request("create", spoke=spoke, url=url, options=options)
    spoke_id: str = await js.request("ready", spoke=spoke)
    return spoke_id


async def state(js: JsDriver, spoke: str, topic: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = await js.request("state", spoke=spoke, topic=topic)
    return result


def welcome(spoke_id: str) -> str:
    return json.dumps(
        {"type": "__welcome", "id": "", "payload": {"protocol": 1, "spoke_id": spoke_id}}
    )


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def serve_like_a_hub(
    handler: Callable[[ServerConnection], Awaitable[None]], **options: Any
) -> Server:
    """A stand-in server on 127.0.0.1 that selects the `alkpubsub.v1` subprotocol, as
    the hub does (browsers and `ws` fail a handshake that selects none of those offered)."""
    return serve(handler, "127.0.0.1", 0, subprotocols=[Subprotocol(SUBPROTOCOL)], **options)


# -- packaging -------------------------------------------------------------------------------------


def test_js_module_and_types_are_package_data() -> None:
    static = importlib.resources.files("alkpubsub") / "static"
    module = (static / "alkpubsub.js").read_text(encoding="utf-8")
    types = (static / "alkpubsub.d.ts").read_text(encoding="utf-8")
    assert "export function createWebSocketSpoke" in module
    assert "export declare function createWebSocketSpoke" in types
    assert "import " not in module.split("export const PROTOCOL_VERSION")[0]  # no dependencies


def test_type_declarations_describe_the_module() -> None:
    """tests/js/types_check.ts uses the API as docs/javascript.md does; tsc --strict
    checks it against alkpubsub.d.ts."""
    require_js(browser=False)
    node = shutil.which("node") or "node"
    tsc = [node, str(JS_DIR / "node_modules" / "typescript" / "bin" / "tsc"), "-p", str(JS_DIR)]
    result = subprocess.run(tsc, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- B1: three runtimes on one hub -----------------------------------------------------------------


async def test_b1_browser_node_and_python_exchange_events_both_ways(
    hub: WebSocketHub, node_js: JsDriver, browser_js: JsDriver
) -> None:
    """B1 delivery, own publications included, unicode and 500 KB payloads."""
    topic = "chat:room-ü"
    await spawn(node_js, "n", hub.url)
    await spawn(browser_js, "b", hub.url)
    async with WebSocketSpoke(hub.url) as python:
        heard_by_python = Recorder("python")
        python.add_event_listener(topic, heard_by_python)
        for js, name in ((node_js, "n"), (browser_js, "b")):
            await js.request("listen", spoke=name, topic=topic)
            await js.request("flush", spoke=name)
        await within(python.flush())

        def payloads(sender: str) -> list[Any]:
            return [f"héllo 世界 🎉 from {sender}", {"from": sender, "blob": "é" * (BIG // 2)}]

        for js, name in ((node_js, "node"), (browser_js, "browser")):
            for payload in payloads(name):
                await js.request(
                    "publish", spoke=name[0], type="chat", id="room-ü", payload=payload
                )
        for payload in payloads("python"):
            python.dispatch_event(make_event("chat", "room-ü", payload))

        senders = ("node", "browser", "python")
        expected = sorted(json.dumps(p) for sender in senders for p in payloads(sender))
        await heard_by_python.wait_for_count(6, TIMEOUT)
        for js, name in ((node_js, "n"), (browser_js, "b")):
            await js.wait_for("message", name, count=6)
        # Everyone flushed again: still exactly once each.
        await within(python.flush())
        for js, name in ((node_js, "n"), (browser_js, "b")):
            await js.request("flush", spoke=name)
            assert sorted(json.dumps(p) for p in js.payloads(name)) == expected
            assert {e["topic"] for e in js.reported("message", name)} == {topic}
        assert sorted(json.dumps(p) for p in heard_by_python.payloads) == expected


# -- B2 ... B6 -------------------------------------------------------------------------------------


async def test_b2_nothing_arrives_for_other_topics_on_the_wire(
    hub: WebSocketHub, js: JsDriver
) -> None:
    await spawn(js, "s", hub.url)
    await js.request("listen", spoke="s", topic="a:1")
    await js.request("flush", spoke="s")
    for type_, id_ in (("a", "2"), ("b", "1"), ("a", "1"), ("a", "10"), ("a1", "")):
        hub.dispatch_event(make_event(type_, id_, f"{type_}:{id_}"))
    await js.request("flush", spoke="s")  # the pong follows every data frame queued before
    assert js.payloads("s") == ["a:1"]
    assert (await state(js, "s"))["stats"]["receivedEvents"] == 1  # counted on arrival


async def test_b3_order_is_kept_in_both_directions(hub: WebSocketHub, js: JsDriver) -> None:
    heard_by_hub = Recorder("hub")
    hub.add_event_listener("order:up", heard_by_hub)
    await spawn(js, "s", hub.url)
    await js.request("listen", spoke="s", topic="order:down")
    await js.request("flush", spoke="s")
    result = await js.request("publishMany", spoke="s", type="order", id="up", count=200)
    assert result == {"published": 200, "error": None}
    async with WebSocketSpoke(hub.url) as python:
        await publish_all(python, (make_event("order", "down", i) for i in range(200)))
    await js.wait_for("message", "s", count=200)
    await js.request("flush", spoke="s")
    assert heard_by_hub.payloads == list(range(200))
    assert js.payloads("s") == list(range(200))


async def test_b4_flush_returns_once_the_hub_processed_everything(
    hub: WebSocketHub, js: JsDriver
) -> None:
    heard_by_hub = Recorder("hub")
    hub.add_event_listener("count:1", heard_by_hub)
    await spawn(js, "s", hub.url)
    await js.request("listen", spoke="s", topic="ready:1")
    await js.request("flush", spoke="s")
    assert [peer.spoke_id for peer in hub.subscribers("ready:1")] != []  # live, no waiting
    hub.dispatch_event(make_event("ready", "1", "first event after flush"))
    await js.wait_for("message", "s")
    await js.request("publishMany", spoke="s", type="count", id="1", count=100)
    await js.request("flush", spoke="s")
    assert heard_by_hub.payloads == list(range(100))  # all there when flush returned


async def test_b5_unsubscribed_topics_stop_at_the_hub(hub: WebSocketHub, js: JsDriver) -> None:
    await spawn(js, "s", hub.url)
    await js.request("listen", spoke="s", topic="t:1")
    await js.request("flush", spoke="s")
    hub.dispatch_event(make_event("t", "1", "before"))
    await js.wait_for("message", "s")
    await js.request("unlisten", spoke="s", topic="t:1")
    await js.request("flush", spoke="s")
    assert hub.subscribers("t:1") == []
    hub.dispatch_event(make_event("t", "1", "after"))
    await js.request("flush", spoke="s")
    assert js.payloads("s") == ["before"]
    assert (await state(js, "s"))["stats"]["receivedEvents"] == 1


async def test_b6_refcounted_subscribe_and_unsubscribe_seen_by_the_hub(
    hub: WebSocketHub, js: JsDriver
) -> None:
    """B6: one __subscribe on 0 -> 1, one __unsubscribe on 1 -> 0, counted in frames
    received by the hub (each flush adds its own __ping)."""
    topic = "job.status:42"
    await spawn(js, "s", hub.url)
    await js.request("flush", spoke="s")

    async def frames_for(*commands: dict[str, Any]) -> int:
        before = hub.stats.received_frames
        for command in commands:
            await js.request(command.pop("op"), spoke="s", topic=topic, **command)
        await js.request("flush", spoke="s")
        return hub.stats.received_frames - before - 1  # minus the flush's ping

    added = [{"op": "listen", "listener": name} for name in ("l1", "l1", "l2", None)]
    assert await frames_for(*added) == 1
    assert len(hub.subscribers(topic)) == 1
    assert (await state(js, "s", topic))["listenerCount"] == 2
    assert await frames_for({"op": "unlisten", "listener": "l1"}) == 0
    assert await frames_for({"op": "unlisten", "listener": "never-added"}) == 0
    assert await frames_for({"op": "unlisten", "listener": None}) == 0
    assert len(hub.subscribers(topic)) == 1
    hub.dispatch_event(make_event("job.status", "42", "once"))
    (message,) = await js.wait_for("message", "s")
    assert message["listener"] == "l2"
    assert await frames_for({"op": "unlisten", "listener": "l2"}) == 1
    assert hub.subscribers(topic) == []


async def test_b9_a_failing_listener_does_not_stop_the_others(
    hub: WebSocketHub, js: JsDriver
) -> None:
    await spawn(js, "s", hub.url)
    for listener in ("first", "throwing", "last"):
        await js.request("listen", spoke="s", topic="t:1", listener=listener)
    await js.request("flush", spoke="s")
    hub.dispatch_event(make_event("t", "1", "one"))
    hub.dispatch_event(make_event("t", "1", "two"))
    messages = await js.wait_for("message", "s", count=6)
    assert [(m["listener"], m["envelope"]["payload"]) for m in messages] == [
        (listener, payload)
        for payload in ("one", "two")
        for listener in ("first", "throwing", "last")
    ]
    failures = await js.wait_for("listener-error", "s", count=2)
    assert {f["error"]["message"] for f in failures} == {"throwing fails on purpose"}
    assert (await state(js, "s"))["connected"] is True


# -- B7: reconnect ---------------------------------------------------------------------------------


async def test_b7_reconnects_after_a_hub_restart_resubscribes_and_sends_its_outbox(
    js: JsDriver,
) -> None:
    first = WebSocketHub(port=0)
    await first.start()
    url = first.url
    try:
        first_id = await spawn(js, "s", url)
        await js.request("listen", spoke="s", topic="news:1")
        await js.request("flush", spoke="s")
        assert len(first.subscribers("news:1")) == 1
    finally:
        await first.aclose()
    (disconnect,) = await js.wait_for("disconnect", "s")
    assert disconnect["code"] == 1001  # the hub went away
    result = await js.request("publishMany", spoke="s", type="outbox", id="1", count=5)
    assert result == {"published": 5, "error": None}
    assert (await state(js, "s"))["outboxSize"] == 5
    # B4 across the gap: this flush completes on the next connection only.
    flushing = asyncio.ensure_future(js.request("flush", spoke="s", timeoutMs=20_000, timeout=25))

    heard_by_hub = Recorder("second hub")
    second = WebSocketHub(port=port_of(url))
    second.add_event_listener("outbox:1", heard_by_hub)
    async with second:
        await within(flushing, 25)
        assert heard_by_hub.payloads == [0, 1, 2, 3, 4]
        connects = js.reported("connect", "s")
        assert [e["spokeId"] for e in connects[:1]] == [first_id]
        assert len(connects) == 2
        assert connects[1]["spokeId"] != first_id
        assert [p.spoke_id for p in second.subscribers("news:1")] == [connects[1]["spokeId"]]
        second.dispatch_event(make_event("news", "1", "after the restart"))
        await js.wait_for("message", "s")
        assert js.payloads("s") == ["after the restart"]
        assert (await state(js, "s"))["outboxSize"] == 0


async def test_b7_offline_outbox_is_bounded(js: JsDriver) -> None:
    """B7: the outbox keeps at most outboxLimit events; past it dispatch throws
    BackpressureError and what was accepted still goes out after connecting."""
    probe = WebSocketHub(port=0)
    await probe.start()
    url = probe.url
    await probe.aclose()  # nothing listens there now: the spoke stays offline
    await js.request("create", spoke="s", url=url, options={"outboxLimit": 5})
    result = await js.request("publishMany", spoke="s", type="o", id="1", count=6)
    assert result["published"] == 5
    assert result["error"]["name"] == "BackpressureError"
    assert "outbox is full (5 events)" in result["error"]["message"]
    assert (await state(js, "s"))["outboxSize"] == 5

    heard_by_hub = Recorder("hub")
    hub = WebSocketHub(port=port_of(url))
    hub.add_event_listener("o:1", heard_by_hub)
    async with hub:
        await js.request("flush", spoke="s", timeoutMs=20_000, timeout=25)
        assert heard_by_hub.payloads == [0, 1, 2, 3, 4]


async def test_b7_refused_upgrades_are_reported_and_retried_with_backoff(
    node_js: JsDriver,
) -> None:
    """B7: HTTP 401 before the upgrade (a client that sends no Origin) is reported with
    its status and retried with growing, never-tight delays. (A browser is refused in
    band instead, 4401, and stops; a page of an origin the hub does not allow gets HTTP
    403 and backs off the same way: tests/test_js_browser_safety.py.)"""
    js = node_js

    def authenticate(_: HttpRequestInfo) -> int:
        return 401

    async with WebSocketHub(port=0, authenticate=authenticate) as hub:
        await js.request(
            "create", spoke="s", url=hub.url, options={"backoffInitialMs": 100, "backoffMaxMs": 400}
        )
        errors = await js.wait_for("error", "s", count=4)
        await js.request("close", spoke="s")
    assert {e["error"]["name"] for e in errors} == {"ConnectionRefusedByHubError"}
    assert {e["error"]["status"] for e in errors} == {401}
    assert not any(e["error"]["final"] for e in errors)
    gaps = [b["at"] - a["at"] for a, b in itertools.pairwise(errors)]
    # Delays are in [50, 100], [100, 200], [200, 400] ms (equal jitter); allow timer slack.
    assert all(gap >= low for gap, low in zip(gaps, (45, 95, 195), strict=True)), gaps


async def test_node_spoke_sends_headers_for_authenticate(node_js: JsDriver) -> None:
    """The docs' way to authenticate a Node spoke: a `ws` subclass that adds headers."""

    def authenticate(request: HttpRequestInfo) -> bool | int:
        return request.headers.get("authorization") == "Bearer s3cret" or 401

    async with WebSocketHub(port=0, authenticate=authenticate) as hub:
        await node_js.request(
            "create", spoke="s", url=hub.url, headers={"Authorization": "Bearer s3cret"}
        )
        await node_js.request("ready", spoke="s")
        assert len(hub.peers) == 1
        assert hub.peers[0].headers.get("authorization") == "Bearer s3cret"


# -- B10: bad input --------------------------------------------------------------------------------

GARBAGE_TEXT = [
    "not json",
    "[1, 2, 3]",
    '"a string"',
    '{"type": "a b", "id": "x", "payload": 1}',
    '{"type": "no-id"}',
    '{"type": "t", "id": 7}',
    '{"type": "__nope", "id": ""}',
    '{"type": "__subscribe", "id": "", "payload": {"topic": ""}}',
]


async def test_b10_garbage_from_a_raw_socket_disturbs_nobody(
    hub: WebSocketHub, js: JsDriver
) -> None:
    """B10: invalid JSON, wrong shapes, bad topics, invalid UTF-8 and an oversized
    frame from one raw WebSocket (in the browser: the page's own WebSocket); the
    hub closes only that connection (1009) and the spokes keep exchanging events."""
    await spawn(js, "s", hub.url)
    await js.request("listen", spoke="s", topic="t:1")
    await js.request("flush", spoke="s")
    async with WebSocketSpoke(hub.url) as python:
        heard_by_python = Recorder("python")
        python.add_event_listener("t:1", heard_by_python)
        await within(python.flush())
        invalid_before = hub.stats.invalid_frames
        await js.request("rawOpen", name="raw", url=hub.url)
        for text in GARBAGE_TEXT:
            await js.request("rawSend", name="raw", text=text)
        await js.request("rawSend", name="raw", bytes=[0xFF, 0xFE, 0x7B])
        await js.request(
            "rawSend", name="raw", text='{"type": "t", "id": "1", "payload": "raw ok"}'
        )
        await js.request("rawSend", name="raw", envelopeOfBytes=hub.max_frame_bytes + 10)
        (closed,) = await js.wait_for("raw-close")
        assert closed["code"] == 1009
        await js.request("publish", spoke="s", type="t", id="1", payload="from js")
        python.dispatch_event(make_event("t", "1", "from python"))
        await heard_by_python.wait_for_count(3, TIMEOUT)
        await js.wait_for("message", "s", count=3)
        assert heard_by_python.payloads == ["raw ok", "from js", "from python"]
        assert js.payloads("s") == ["raw ok", "from js", "from python"]
        # Seven undecodable frames (invalid binary UTF-8 included) and the oversized
        # one that closed the connection; the rest are control frames.
        assert hub.stats.invalid_frames - invalid_before == 8
        assert (await state(js, "s"))["connected"] is True


async def test_b10_a_misbehaving_hub_cannot_break_the_spoke(js: JsDriver) -> None:
    """B10 on the spoke side: a server that sends garbage, unknown control frames
    and envelopes with extra fields; only valid events reach listeners, the rest is
    counted, and the spoke still answers pings."""
    pong = asyncio.get_running_loop().create_future()

    async def misbehave(connection: ServerConnection) -> None:
        await connection.send(welcome("x-1"))
        async for message in connection:
            frame = json.loads(message)
            if frame["type"] == "__subscribe":
                for text in GARBAGE_TEXT[:6]:
                    await connection.send(text)
                await connection.send(b"\xff\xfe")
                await connection.send('{"type": "__from_the_future", "id": "", "payload": {}}')
                await connection.send('{"type": "t", "id": "1", "payload": "valid", "extra": 1}')
                await connection.send('{"type": "__ping", "id": "p-1", "payload": {}}')
            elif frame["type"] == "__pong" and not pong.done():
                pong.set_result(frame["id"])

    async with serve_like_a_hub(misbehave) as server:
        port = server.sockets[0].getsockname()[1]
        spoke_id = await spawn(js, "s", f"ws://127.0.0.1:{port}/")
        assert spoke_id == "x-1"
        await js.request("listen", spoke="s", topic="t:1")
        assert await within(pong) == "p-1"
    (message,) = await js.wait_for("message", "s")
    assert message["envelope"] == {"type": "t", "id": "1", "payload": "valid"}  # E7
    stats = (await state(js, "s"))["stats"]
    assert stats["invalidFrames"] == 7
    assert stats["unknownControl"] == 1
    assert stats["receivedEvents"] == 1


# -- B11, B12, final refusals ----------------------------------------------------------------------


async def test_b11_close_is_idempotent_and_final(js: JsDriver) -> None:
    gone = asyncio.Event()
    async with WebSocketHub(port=0, on_disconnection=lambda _: gone.set()) as hub:
        await closing_checks(js, hub, gone)


async def closing_checks(js: JsDriver, hub: WebSocketHub, gone: asyncio.Event) -> None:
    await spawn(js, "s", hub.url)
    await js.request("listen", spoke="s", topic="t:1")
    await js.request("flush", spoke="s")
    assert len(hub.peers) == 1
    await js.request("close", spoke="s")
    await js.request("close", spoke="s")  # idempotent
    await within(gone.wait())
    assert hub.peers == []
    assert hub.subscribers("t:1") == []
    with pytest.raises(JsCommandError) as raised:
        await js.request("publish", spoke="s", type="t", id="1", payload=1)
    assert raised.value.error["name"] == "TargetClosedError"
    await js.request("listen", spoke="s", topic="t:2")  # no-op
    await js.request("unlisten", spoke="s", topic="t:1")  # no-op
    await js.request("flush", spoke="s")  # returns at once
    after = await state(js, "s", "t:2")
    assert (after["closed"], after["connected"]) == (True, False)
    assert (after["listenerCount"], after["spokeId"]) == (0, None)
    assert js.reported("disconnect", "s") == []  # closing is not a disconnection


async def test_b11_closing_before_the_first_connection_rejects_ready(js: JsDriver) -> None:
    probe = WebSocketHub(port=0)
    await probe.start()
    url = probe.url
    await probe.aclose()
    await js.request("create", spoke="s", url=url)
    waiting = asyncio.ensure_future(js.request("ready", spoke="s", timeoutMs=20_000, timeout=25))
    await js.request("close", spoke="s")
    with pytest.raises(JsCommandError) as raised:
        await within(waiting)
    assert raised.value.error["name"] == "TargetClosedError"


async def test_b12_forbidden_requests_reach_on_error(js: JsDriver) -> None:
    def authorize(_: Peer, action: str, topic: str) -> bool:
        return not topic.startswith(f"secret.{action}")

    async with WebSocketHub(port=0, authorize=authorize) as hub:
        spoke_id = await spawn(js, "s", hub.url)
        await js.request("listen", spoke="s", topic="secret.subscribe:1")
        await js.request("publish", spoke="s", type="secret.publish", id="1", payload=1)
        await js.request("listen", spoke="s", topic="direct:somebody-else")
        await js.request("listen", spoke="s", topic=f"direct:{spoke_id}")
        await js.request("flush", spoke="s")
        errors = [e["error"] for e in await js.wait_for("error", "s", count=3)]
        assert [(e["name"], e["code"], e["topic"]) for e in errors] == [
            ("HubRefusalError", "forbidden", "secret.subscribe:1"),
            ("HubRefusalError", "forbidden", "secret.publish:1"),
            ("HubRefusalError", "forbidden", "direct:somebody-else"),
        ]
        hub.dispatch_event(make_event("direct", spoke_id, "for you only"))
        await js.wait_for("message", "s")
        assert js.payloads("s") == ["for you only"]
        assert (await state(js, "s"))["stats"]["hubErrors"] == 3


@pytest.mark.parametrize("code", [4401, 4403])
async def test_close_codes_4401_and_4403_are_final_refusals(
    hub: WebSocketHub, js: JsDriver, code: int
) -> None:
    spoke_id = await spawn(js, "s", hub.url)
    connections = hub.stats.connections
    assert await hub.disconnect_peer(spoke_id, code, "go away")
    (disconnect,) = await js.wait_for("disconnect", "s")
    (error,) = [e["error"] for e in await js.wait_for("error", "s")]
    assert (disconnect["code"], disconnect["reason"]) == (code, "go away")
    assert error["name"] == "ConnectionRefusedByHubError"
    assert (error["closeCode"], error["final"]) == (code, True)
    after = await state(js, "s")
    assert (after["closed"], after["stats"]["attempts"]) == (True, 1)
    with pytest.raises(JsCommandError) as raised:
        await js.request("publish", spoke="s", type="t", id="1", payload=1)
    assert raised.value.error["name"] == "TargetClosedError"
    assert hub.stats.connections == connections


async def test_a_finally_refused_node_spoke_leaves_nothing_running(hub: WebSocketHub) -> None:
    """After 4403 the spoke holds no timer and no socket: a Node program that did
    nothing else ends by itself."""
    require_js(browser=False)
    script = (
        "import { WebSocket } from 'ws';"
        f"import {{ createWebSocketSpoke }} from {json.dumps(str(static_dir() / 'alkpubsub.js'))};"
        "const spoke = createWebSocketSpoke(process.argv[1], { WebSocket,"
        " onError: (e) => console.log(JSON.stringify({ error: e.name, final: e.final })) });"
        "await spoke.ready();"
        "console.log(JSON.stringify({ spokeId: spoke.spokeId }));"
    )
    node = shutil.which("node") or "node"
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        node, "--input-type=module", "--eval", script, hub.url,
        cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None
        first = json.loads(await within(process.stdout.readline()))
        assert await hub.disconnect_peer(first["spokeId"], 4403, "banned")
        out, err = await within(process.communicate())
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == {"error": "ConnectionRefusedByHubError", "final": True}
    assert time.monotonic() - started < 10


async def test_a_closed_node_spoke_delivered_everything_and_leaves_nothing_running(
    hub: WebSocketHub,
) -> None:
    """close() right after publishing: the hub has every event when it resolves, and
    the heartbeat and every other timer are gone: the Node program ends by itself."""
    require_js(browser=False)
    heard_by_hub = Recorder("hub")
    hub.add_event_listener("last:1", heard_by_hub)
    script = (
        "import { WebSocket } from 'ws';"
        f"import {{ createWebSocketSpoke }} from {json.dumps(str(static_dir() / 'alkpubsub.js'))};"
        "const spoke = createWebSocketSpoke(process.argv[1], { WebSocket });"
        "await spoke.ready();"
        "for (let i = 0; i < 100; i += 1) spoke.publish('last', '1', i);"
        "await spoke.close();"
        "console.log(JSON.stringify(spoke.stats.undeliveredEvents));"
    )
    node = shutil.which("node") or "node"
    process = await asyncio.create_subprocess_exec(
        node, "--input-type=module", "--eval", script, hub.url,
        cwd=JS_DIR, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await within(process.communicate())
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
    assert process.returncode == 0, err.decode()
    assert json.loads(out) == 0
    assert heard_by_hub.payloads == list(range(100))
    assert hub.router.sessions == {}


# -- B13: a hub that does not read -----------------------------------------------------------------


async def test_b13_a_stalled_connection_bounds_what_the_spoke_buffers(js: JsDriver) -> None:
    """B13: while connected, dispatch throws BackpressureError once maxBufferedBytes
    are written to the socket but not yet taken by the other side."""
    release = asyncio.Event()

    async def never_reads(connection: ServerConnection) -> None:
        await connection.send(welcome("x"))
        await release.wait()
        async for _ in connection:  # now read everything, up to the spoke's close
            pass

    async with serve_like_a_hub(never_reads, max_queue=1, max_size=None) as server:
        port = server.sockets[0].getsockname()[1]
        await spawn(js, "s", f"ws://127.0.0.1:{port}/", maxBufferedBytes=256 * 1024)
        result = await js.request(
            "publishMany", spoke="s", type="bulk", id="1", count=2000, payloadBytes=64 * 1024
        )
        release.set()
        await js.request("close", spoke="s")
    assert (result["error"] or {}).get("name") == "BackpressureError", result
    assert "maxBufferedBytes=262144" in result["error"]["message"]
    assert 1 <= result["published"] < 2000


# -- sessions, heartbeats, close codes (docs/protocol.md §4, §5) ----------------------------------


class ResettingProxy:
    """A TCP proxy between JS spokes and a hub on 127.0.0.1. ``reset()`` kills every
    connection through it with a TCP RST (no WebSocket close, in either direction);
    ``hold()`` makes the current connections drop what the spokes send (it never
    reaches the hub). New connections are forwarded normally."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.pipes: dict[tuple[asyncio.StreamWriter, asyncio.StreamWriter], bool] = {}
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    async def __aenter__(self) -> ResettingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def reset(self) -> int:
        """Abort every connection (RST both ways); returns how many there were."""
        pipes = list(self.pipes)
        self.pipes.clear()
        for pipe in pipes:
            for writer in pipe:
                with contextlib.suppress(OSError):
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        return len(pipes)

    def hold(self) -> None:
        for pipe in self.pipes:
            self.pipes[pipe] = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the hub is down: the spoke sees a failed attempt
            writer.transport.abort()
            return
        pipe = (writer, up_writer)
        self.pipes[pipe] = False
        for source, sink, upstream in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.ensure_future(self._copy(pipe, source, sink, upstream))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _copy(
        self,
        pipe: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                if upstream and self.pipes.get(pipe, False):
                    continue  # held: dropped on the way to the hub
                sink.write(data)
                await sink.drain()
            sink.close()  # a clean end goes on cleanly


@pytest_asyncio.fixture
async def proxied_hub() -> AsyncIterator[tuple[WebSocketHub, ResettingProxy]]:
    async with WebSocketHub(port=0) as hub, ResettingProxy(port_of(hub.url)) as proxy:
        yield hub, proxy


def sessions(js: JsDriver, spoke: str) -> list[tuple[str, bool, bool, int]]:
    return [
        (e["spokeId"], e["resumed"], e["gap"], e["undelivered"])
        for e in js.reported("session", spoke)
    ]


async def test_session_acks_flow_both_ways(hub: WebSocketHub, js: JsDriver) -> None:
    """§5: the hello asks for a session and announces the heartbeat; each side
    acknowledges what it received (an __ack every 64 frames, counts on pings)."""
    heard_by_hub = Recorder("hub")
    hub.add_event_listener("up:1", heard_by_hub)
    spoke_id = await spawn(js, "s", hub.url)
    conn = hub.router.connections[spoke_id]
    assert conn.token is not None
    assert conn.heartbeat_ticks is not None  # "heartbeat": 1 announced
    assert sessions(js, "s") == [(spoke_id, False, False, 0)]
    await js.request("listen", spoke="s", topic="down:1")
    await js.request("flush", spoke="s")
    for i in range(200):
        hub.dispatch_event(make_event("down", "1", i))
    await js.wait_for("message", "s", count=200)
    assert js.payloads("s") == list(range(200))
    result = await js.request("publishMany", spoke="s", type="up", id="1", count=200)
    assert result == {"published": 200, "error": None}
    await heard_by_hub.wait_for_count(200, TIMEOUT)
    assert conn.sent is not None
    assert len(conn.sent) < 64  # the spoke's __ack frames confirmed the rest
    await js.request("flush", spoke="s")  # the pong carries the hub's count
    after = await state(js, "s")
    assert (after["hasSession"], after["unconfirmedSize"]) == (True, 0)
    assert after["stats"]["invalidFrames"] == 0
    assert hub.stats.invalid_control == 0  # no ack for more than was sent


async def test_session_false_is_a_plain_client(hub: WebSocketHub, js: JsDriver) -> None:
    spoke_id = await spawn(js, "s", hub.url, session=False, heartbeatIntervalMs=None)
    conn = hub.router.connections[spoke_id]
    assert (conn.token, conn.sent, conn.heartbeat_ticks) == (None, None, None)
    await js.request("publishMany", spoke="s", type="t", id="1", count=100)
    await js.request("flush", spoke="s")
    after = await state(js, "s")
    assert (after["hasSession"], after["unconfirmedSize"]) == (False, 0)


async def test_session_resumes_through_resets_losing_and_duplicating_nothing(
    proxied_hub: tuple[WebSocketHub, ResettingProxy], js: JsDriver
) -> None:
    """§5, B7: while events flow both ways the TCP connection is reset (RST, no close
    frame) three times, once after the proxy dropped half of what the spoke sent; each
    reconnect resumes the session: same spoke id, every event delivered once, in
    order, in both directions."""
    hub, proxy = proxied_hub
    heard_by_hub = Recorder("hub")
    hub.add_event_listener("up:1", heard_by_hub)
    spoke_id = await spawn(js, "s", proxy.url, backoffInitialMs=50, backoffMaxMs=200)
    await js.request("listen", spoke="s", topic="down:1")
    await js.request("flush", spoke="s")
    half, rounds = 50, 3
    for round_ in range(rounds):
        for part in range(2):
            if round_ == 1 and part == 1:
                proxy.hold()  # this half never reaches the hub: it must be sent again
            result = await js.request(
                "publishMany", spoke="s", type="up", id="1", count=half,
                start=(2 * round_ + part) * half, payloadBytes=1000,
            )  # fmt: skip
            assert result == {"published": half, "error": None}
        for i in range(2 * round_ * half, 2 * (round_ + 1) * half):
            hub.dispatch_event(make_event("down", "1", {"index": i, "padding": "y" * 1000}))
        assert proxy.reset() == 1  # with frames in flight both ways
        await js.wait_for("session", "s", count=round_ + 2)
    total = 2 * half * rounds
    await js.wait_for("message", "s", count=total)
    await js.request("flush", spoke="s")
    await heard_by_hub.wait_for_count(total, TIMEOUT)
    assert [p["index"] for p in heard_by_hub.payloads] == list(range(total))
    assert [p["index"] for p in js.payloads("s")] == list(range(total))
    first, resumed = (spoke_id, False, False, 0), (spoke_id, True, False, 0)
    assert sessions(js, "s") == [first] + [resumed] * rounds
    assert hub.stats.sessions_resumed == rounds
    disconnects = js.reported("disconnect", "s")
    assert len(disconnects) == rounds
    assert {d["code"] for d in disconnects} == {1006}
    stats = (await state(js, "s"))["stats"]
    assert stats["resentEvents"] >= half
    assert (stats["resumedSessions"], stats["undeliveredEvents"], stats["gaps"]) == (rounds, 0, 0)
    assert js.reported("error", "s") == []


async def test_after_a_hub_restart_the_spoke_reports_the_gap_and_moves_its_inbox(
    js: JsDriver,
) -> None:
    """§5: the new hub knows no session: the spoke gets a new id, reports the gap and
    the events the old hub never confirmed (onUndelivered), and the application's
    `direct:` listener, moved in onSession, works on the new id."""
    first = WebSocketHub(port=0, close_timeout=0.2)
    await first.start()
    port = port_of(first.url)
    heard = Recorder("hubs")
    first.add_event_listener("lost:1", heard)
    async with ResettingProxy(port) as proxy:
        try:
            await js.request(
                "create", spoke="s", url=proxy.url, followDirect=True,
                options={"backoffInitialMs": 50, "backoffMaxMs": 200},
            )  # fmt: skip
            first_id = await js.request("ready", spoke="s")
            await js.request("flush", spoke="s")
            first.dispatch_event(make_event("direct", first_id, "to the first id"))
            await js.wait_for("message", "s")
            proxy.hold()  # what the spoke sends now never reaches the first hub
            await js.request("publishMany", spoke="s", type="lost", id="1", count=5)
            assert (await state(js, "s"))["unconfirmedSize"] == 5
        finally:
            await first.aclose()
        second = WebSocketHub(port=port)
        second.add_event_listener("lost:1", heard)
        async with second:
            (_, session) = await js.wait_for("session", "s", count=2)
            new_id = session["spokeId"]
            assert new_id != first_id
            assert (session["resumed"], session["gap"], session["undelivered"]) == (False, True, 5)
            (undelivered,) = await js.wait_for("undelivered", "s")
            assert [e["payload"] for e in undelivered["envelopes"]] == [0, 1, 2, 3, 4]
            assert (await state(js, "s"))["spokeId"] == new_id  # what the application re-reads
            await js.request("flush", spoke="s")
            assert [p.spoke_id for p in second.subscribers(f"direct:{new_id}")] == [new_id]
            second.dispatch_event(make_event("direct", new_id, "to the new id"))
            await js.wait_for("message", "s", count=2)
            assert js.payloads("s", "inbox") == ["to the first id", "to the new id"]
            assert heard.payloads == []  # never resent: nothing is delivered twice
            after = await state(js, "s")
            assert (after["stats"]["gaps"], after["stats"]["undeliveredEvents"]) == (1, 5)
            assert js.reported("error", "s") == []  # no refused direct:<old id>


async def test_a_stolen_token_is_refused_while_its_session_is_live(
    hub: WebSocketHub, js: JsDriver
) -> None:
    """§5: a second spoke that presents the first one's resume token is closed with
    4409, retries with backoff, and the first spoke notices nothing."""
    owner_id = await spawn(js, "owner", hub.url)
    await js.request("listen", spoke="owner", topic="t:1")
    await js.request("flush", spoke="owner")
    token = hub.router.connections[owner_id].token
    await js.request(
        "create", spoke="thief", url=hub.url, helloPatch={"resume": token, "received": 0},
        options={"backoffInitialMs": 50, "backoffMaxMs": 100},
    )  # fmt: skip
    refusals = [e["error"] for e in await js.wait_for("error", "thief", count=3)]
    assert {(e["name"], e["closeCode"]) for e in refusals} == {("ConnectionFailedError", 4409)}
    thief = await state(js, "thief")
    assert (thief["connected"], thief["closed"], thief["spokeId"]) == (False, False, None)
    assert thief["stats"]["attempts"] >= 3
    await js.request("close", spoke="thief")
    assert hub.router.connections[owner_id].token == token  # untouched
    hub.dispatch_event(make_event("t", "1", "still here"))
    await js.wait_for("message", "owner")
    owner = await state(js, "owner")
    assert (owner["connected"], owner["spokeId"]) == (True, owner_id)
    assert js.reported("disconnect", "owner") == []
    assert js.reported("session", "thief") == []


async def test_close_delivers_what_was_accepted_then_ends_the_session(js: JsDriver) -> None:
    """close() waits until the hub confirmed every event, then closes with 1000: the
    hub forgets the session."""
    gone = asyncio.Event()
    heard_by_hub = Recorder("hub")
    async with WebSocketHub(port=0, on_disconnection=lambda _: gone.set()) as hub:
        hub.add_event_listener("bye:1", heard_by_hub)
        await spawn(js, "s", hub.url)
        await js.request("publishMany", spoke="s", type="bye", id="1", count=300, payloadBytes=2000)
        await js.request("close", spoke="s")
        assert heard_by_hub.payloads == [{"index": i, "padding": "x" * 2000} for i in range(300)]
        await within(gone.wait())  # the session ended with the link, not after a grace period
        assert hub.router.connections == {}
        assert hub.router.sessions == {}
    assert js.reported("undelivered", "s") == []
    assert (await state(js, "s"))["stats"]["undeliveredEvents"] == 0


async def test_close_reports_what_the_hub_could_not_confirm(
    proxied_hub: tuple[WebSocketHub, ResettingProxy], js: JsDriver
) -> None:
    _, proxy = proxied_hub
    await spawn(js, "s", proxy.url, closeTimeoutMs=300)
    await js.request("flush", spoke="s")
    proxy.hold()
    await js.request("publishMany", spoke="s", type="held", id="1", count=3)
    await js.request("close", spoke="s", wait=False)
    (undelivered,) = await js.wait_for("undelivered", "s")
    proxy.reset()  # the close frame is held too: do not wait for the handshake
    assert [e["payload"] for e in undelivered["envelopes"]] == [0, 1, 2]
    assert (await state(js, "s"))["stats"]["undeliveredEvents"] == 3


HUB_PROCESS = """
import asyncio
from alkpubsub import make_event
from alkpubsub.transports.ws import WebSocketHub

async def main():
    async with WebSocketHub(port=0) as hub:
        def echo(event):
            hub.dispatch_event(make_event("echo", "1", event.detail.payload))
        hub.add_event_listener("echo.request:1", echo)
        print(hub.url, flush=True)
        await asyncio.get_running_loop().create_future()

asyncio.run(main())
"""


async def test_heartbeat_notices_a_frozen_hub_and_the_session_resumes(js: JsDriver) -> None:
    """§5: the hub process is frozen (SIGSTOP; its kernel still accepts the bytes):
    the spoke declares the link lost within 5 s, and once the hub runs again it
    resumes its session with the same id."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HUB_PROCESS, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        url = (await within(process.stdout.readline())).decode().strip()
        spoke_id = await spawn(js, "s", url, backoffInitialMs=100, backoffMaxMs=500)
        await js.request("listen", spoke="s", topic="echo:1")
        await js.request("flush", spoke="s")
        await js.request("publish", spoke="s", type="echo.request", id="1", payload="before")
        await js.wait_for("message", "s")
        process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        (disconnect,) = await js.wait_for("disconnect", "s", timeout=8)
        noticed_after = time.monotonic() - frozen_at
        assert noticed_after < 5, noticed_after
        assert disconnect["code"] == 1006
        assert "nothing heard from the hub for 3000 ms" in disconnect["reason"]
        await js.request("publish", spoke="s", type="echo.request", id="1", payload="during")
        process.send_signal(signal.SIGCONT)
        await js.wait_for("session", "s", count=2, timeout=TIMEOUT + 10)
        assert sessions(js, "s")[1] == (spoke_id, True, False, 0)
        await js.wait_for("message", "s", count=2)
        assert js.payloads("s") == ["before", "during"]
        await js.request("close", spoke="s")
        print(f"{js.name}: frozen hub noticed after {noticed_after:.2f}s")
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGCONT)
            process.kill()
        await process.wait()


async def test_an_idle_spoke_keeps_its_link_with_its_heartbeat(js: JsDriver) -> None:
    """§5: the hub cuts a spoke silent for 3 of its announced heartbeats (here 3 x 0.4 s);
    an idle JS spoke pings (at least every other interval) and is never cut."""
    async with WebSocketHub(port=0, tick_interval=0.1) as hub:
        spoke_id = await spawn(js, "s", hub.url, heartbeatIntervalMs=400, heartbeatTimeoutMs=1200)
        assert hub.router.connections[spoke_id].heartbeat_ticks is not None
        frames = hub.stats.received_frames
        await asyncio.sleep(1.6)  # idle for 4 intervals: only heartbeats cross the link
        assert hub.stats.heartbeat_timeouts == 0
        assert hub.stats.received_frames > frames  # its pings (every other interval)
        assert (await state(js, "s"))["connected"] is True
        assert js.reported("disconnect", "s") == []


@pytest.mark.parametrize(("announced", "final"), [(4403, True), (1013, False)])
async def test_an_announced_close_code_counts_when_the_close_frame_is_lost(
    js: JsDriver, announced: int, final: bool
) -> None:
    """§4: the hub's __close announces the code; the TCP connection then dies without
    a close frame (1006): the spoke reports the announced code, and 4403 is final."""
    connections = 0

    async def announce_and_vanish(connection: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await connection.recv()  # the hello
        await connection.send(welcome(f"x-{connections}"))
        if connections == 1:
            close = {"code": announced, "reason": "announced"}
            await connection.send(json.dumps({"type": "__close", "id": "", "payload": close}))
            assert connection.transport is not None
            connection.transport.abort()
        else:
            await connection.wait_closed()

    async with serve_like_a_hub(announce_and_vanish) as server:
        port = server.sockets[0].getsockname()[1]
        options = {"backoffInitialMs": 50, "backoffMaxMs": 100}
        await js.request("create", spoke="s", url=f"ws://127.0.0.1:{port}/", options=options)
        (disconnect,) = await js.wait_for("disconnect", "s")
        assert (disconnect["code"], disconnect["reason"]) == (announced, "announced")
        if final:
            (error,) = [e["error"] for e in await js.wait_for("error", "s")]
            assert (error["name"], error["closeCode"], error["final"]) == (
                "ConnectionRefusedByHubError", announced, True,
            )  # fmt: skip
            after = await state(js, "s")
            assert (after["closed"], after["stats"]["attempts"]) == (True, 1)
        else:
            await js.wait_for("connect", "s", count=2)
        await js.request("close", spoke="s")
    assert connections == (1 if final else 2)


@pytest.mark.parametrize(("verdict", "code"), [(401, 4401), (False, 4403)])
async def test_a_mounted_hub_refusing_with_4401_or_4403_is_never_retried(
    js: JsDriver, verdict: bool | int, code: int
) -> None:
    """§4, §8: a hub serving an accepted WebSocket refuses with a close code before
    the welcome; the spoke reports it as final and never connects again."""
    refusals: list[str] = []

    def authenticate(request: HttpRequestInfo) -> bool | int:
        refusals.append(request.path or "")
        return verdict

    hub = WebSocketHub(serve=False, authenticate=authenticate)
    async with hub, serve_like_a_hub(hub.serve_connection) as server:
        port = server.sockets[0].getsockname()[1]
        await js.request(
            "create", spoke="s", url=f"ws://127.0.0.1:{port}/",
            options={"backoffInitialMs": 10, "backoffMaxMs": 20},
        )  # fmt: skip
        (error,) = [e["error"] for e in await js.wait_for("error", "s")]
        assert (error["name"], error["closeCode"], error["final"]) == (
            "ConnectionRefusedByHubError", code, True,
        )  # fmt: skip
        await js.request("flush", spoke="s")  # closed: returns at once
        after = await state(js, "s")
        assert (after["closed"], after["stats"]["attempts"]) == (True, 1)
        with pytest.raises(JsCommandError) as raised:
            await js.request("ready", spoke="s")
        assert raised.value.error["name"] == "ConnectionRefusedByHubError"
    assert len(refusals) == 1
    assert js.reported("disconnect", "s") == []  # never welcomed


async def test_protocol_complaints_reach_on_error(js: JsDriver) -> None:
    """__error invalid_frame / invalid_control: the hub dropped something of ours."""

    async def complain(connection: ServerConnection) -> None:
        await connection.recv()
        await connection.send(welcome("x"))
        for code in ("invalid_frame", "invalid_control", "forbidden"):
            error = {"code": code, "message": f"{code} here"}
            await connection.send(json.dumps({"type": "__error", "id": "", "payload": error}))
        await connection.wait_closed()

    async with serve_like_a_hub(complain) as server:
        port = server.sockets[0].getsockname()[1]
        await spawn(js, "s", f"ws://127.0.0.1:{port}/")
        errors = [e["error"] for e in await js.wait_for("error", "s", count=3)]
        await js.request("close", spoke="s")
    assert [(e["name"], e["code"]) for e in errors] == [
        ("ProtocolComplaintError", "invalid_frame"),
        ("ProtocolComplaintError", "invalid_control"),
        ("HubRefusalError", "forbidden"),
    ]


async def test_lone_surrogates_are_refused_before_sending(hub: WebSocketHub, js: JsDriver) -> None:
    """Not Unicode, so never sent (the hub would drop the frame and the session's
    counts would disagree); an escaped backslash before 'ud800' is fine."""
    await spawn(js, "s", hub.url)
    with pytest.raises(JsCommandError) as raised:
        await js.request("publish", spoke="s", type="t", id="1", payloadJson='"a\\ud800b"')
    assert raised.value.error["name"] == "InvalidEnvelopeError"
    assert "lone surrogate" in raised.value.error["message"]
    heard_by_hub = Recorder("hub")
    hub.add_event_listener("t:1", heard_by_hub)
    for payload in ("\\ud800", "😀 pair"):
        await js.request("publish", spoke="s", type="t", id="1", payload=payload)
    await js.request("flush", spoke="s")
    assert heard_by_hub.payloads == ["\\ud800", "😀 pair"]
    assert hub.stats.invalid_frames == 0
