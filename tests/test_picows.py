"""The picows WebSocket backend (``alkpubsub[fast]``): choosing it, what differs
below the link (the upgrade gate, fragments, the receive bound, close codes),
and sessions, heartbeats and the CLI over it.

The whole conformance suite runs on it through the ``ws-picows*`` buses
(tests/conftest.py), and every test of test_ws.py, test_ws_integrations.py,
test_metrics.py and test_deployment.py runs on both backends.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trustme
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import InvalidStatus

from alkpubsub import (
    LinkClosedError,
    MissingExtraError,
    get_transport,
    make_event,
    transport_from_url,
)
from alkpubsub.core.close import CloseCode
from alkpubsub.core.errors import ConnectionLostError, FramingError
from alkpubsub.testing import Recorder, within
from alkpubsub.transports import ws_backends
from alkpubsub.transports.hub import ConnectRequest
from alkpubsub.transports.link import PushLink, read_loop
from alkpubsub.transports.spoke import SessionInfo
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke
from alkpubsub.transports.ws_backends import ENV_WS_BACKEND, resolve_ws_backend

from .test_cli import TIMEOUT, read_until, run, spawn, subscribed
from .test_ws import read_until_closed

pytestmark = pytest.mark.usefixtures("picows_backend")  # fails under CI without picows

HELLO = json.dumps({"type": "__hello", "id": "", "payload": {"protocol": 1}}).encode()


def subscribe(topic: str) -> bytes:
    return json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": topic}}).encode()


# -- choosing the backend ---------------------------------------------------------------------


async def test_auto_picks_picows_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WS_BACKEND, raising=False)
    assert resolve_ws_backend() == "picows"
    assert WebSocketSpoke("ws://127.0.0.1:1/").backend == "picows"
    async with WebSocketHub(port=0) as hub:
        assert hub.backend == "picows"
        assert type(hub.server).__name__ == "PicowsAcceptor"


async def test_environment_overrides_auto_and_an_explicit_backend_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ENV_WS_BACKEND, "websockets")
    assert get_transport("ws-hub", port=0).backend == "websockets"
    assert get_transport("ws-hub", port=0, backend="picows").backend == "picows"
    spoke: Any = transport_from_url("ws://127.0.0.1:1/", backend="picows")
    assert spoke.backend == "picows"
    monkeypatch.setenv(ENV_WS_BACKEND, "Picows ")
    assert resolve_ws_backend() == "picows"
    monkeypatch.setenv(ENV_WS_BACKEND, "fast")
    with pytest.raises(ValueError, match=ENV_WS_BACKEND):
        resolve_ws_backend()
    with pytest.raises(ValueError, match="backend must be one of"):
        WebSocketSpoke("ws://127.0.0.1:1/", backend="uvloop")  # type: ignore[arg-type]


def test_without_picows_auto_is_websockets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WS_BACKEND, raising=False)
    monkeypatch.setattr(ws_backends, "picows_installed", lambda: False)
    assert resolve_ws_backend() == "websockets"
    with pytest.raises(MissingExtraError, match=r"pip install 'alkpubsub\[fast\]'"):
        resolve_ws_backend("picows")


# -- TLS across backends ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hub_backend", "spoke_backend"),
    [("picows", "picows"), ("picows", "websockets"), ("websockets", "picows")],
)
async def test_tls_across_backends(hub_backend: str, spoke_backend: str) -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with WebSocketHub(port=0, ssl=server_context, backend=hub_backend) as hub:  # type: ignore[arg-type]
        assert hub.url.startswith("wss://127.0.0.1:")
        async with WebSocketSpoke(hub.url, ssl=client_context, backend=spoke_backend) as spoke:  # type: ignore[arg-type]
            heard = Recorder()
            spoke.add_event_listener("tls:1", heard)
            await within(spoke.flush())
            hub.dispatch_event(make_event("tls", "1", "x" * 100_000))  # several TLS records
            spoke.dispatch_event(make_event("tls", "1", "back"))
            await heard.wait_for_count(2)
        untrusting = WebSocketSpoke(hub.url, backend=spoke_backend, connect_timeout=2)  # type: ignore[arg-type]
        with pytest.raises(ConnectionError, match="certificate verify failed"):
            await untrusting.start()


# -- the upgrade gate ---------------------------------------------------------------------------


async def test_async_authenticate_decides_before_the_upgrade() -> None:
    seen: list[ConnectRequest] = []

    async def check(request: ConnectRequest) -> bool | int:
        loop = asyncio.get_running_loop()
        later: asyncio.Future[None] = loop.create_future()
        loop.call_soon(later.set_result, None)
        await later  # a policy that really suspends (a database, a token service)
        seen.append(request)
        return True if request.headers.get("authorization") == "Bearer ok" else 401

    async with WebSocketHub(port=0, backend="picows", authenticate=check) as hub:
        with pytest.raises(InvalidStatus) as refused:
            await within(
                connect(
                    hub.url + "?room=1",
                    additional_headers=[("X-Forwarded-For", "10.0.0.1"), ("X-Forwarded-For", "b")],
                    subprotocols=["alkpubsub.v1"],  # type: ignore[list-item]
                )
            )
        assert refused.value.response.status_code == 401
        assert refused.value.response.body == b"Unauthorized\n"
        request = seen[0]
        assert request.path == "/?room=1"
        assert request.headers.get_all("x-forwarded-for") == ["10.0.0.1", "b"]  # type: ignore[attr-defined]
        assert request.subprotocols == ("alkpubsub.v1",)
        assert request.transport == "ws"
        assert request.remote_address is not None
        assert request.remote_address.startswith("127.0.0.1:")
        assert hub.peers == []
        # A head larger than picows's first read buffer is handed over whole.
        headers = {"Authorization": "Bearer ok", "X-Large": "y" * 10_000}
        async with WebSocketSpoke(hub.url, headers=headers) as spoke:
            await within(spoke.flush())
            (peer,) = hub.peers
            assert peer.headers["authorization"] == "Bearer ok"
            assert peer.headers["x-large"] == "y" * 10_000
            assert peer.path == "/"


async def test_plain_http_requests_are_answered_or_refused() -> None:
    async with WebSocketHub(port=0, backend="picows", health_path="/healthz") as hub:
        host, port = hub.url.removeprefix("ws://").rstrip("/").rsplit(":", 1)

        async def ask(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(request)
            answer = await within(reader.read())  # the hub closes after answering
            writer.close()
            return answer

        health = await ask(b"GET /healthz HTTP/1.0\r\n\r\n")
        assert health.startswith(b"HTTP/1.1 200 OK\r\n")
        assert health.endswith(b"\r\n\r\nok\n")
        assert (await ask(b"POST / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 405 ")
        assert (await ask(b"nonsense\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        assert (await ask(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        # A GET on the hub's path that is not an upgrade: picows answers 400.
        assert (await ask(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(b"HTTP/1.1 400 ")
        headers = b"GET / HTTP/1.1\r\n" + b"X-Padding: " + b"x" * 20_000
        assert (await ask(headers)).startswith(b"HTTP/1.1 431 ")


async def test_any_refusal_status_and_a_failing_http_handler_are_answered() -> None:
    async with WebSocketHub(port=0, backend="picows", authenticate=lambda request: 429) as hub:
        with pytest.raises(InvalidStatus) as refused:
            await within(connect(hub.url))
        assert refused.value.response.status_code == 429

        def broken(connection: Any, request: Any) -> None:
            raise RuntimeError("a bug in the handler")

        assert hub.server is not None
        hub.server.http_handler = broken
        with pytest.raises(InvalidStatus) as failed:
            await within(connect(hub.url))
        assert failed.value.response.status_code == 500


async def test_the_protocol_subprotocol_and_in_band_refusals_of_browsers() -> None:
    async with WebSocketHub(
        port=0, backend="picows", authenticate=lambda request: "token.ok" in request.subprotocols
    ) as hub:
        offered: Any = ["alkpubsub.v1", "token.ok"]
        client = await within(connect(hub.url, subprotocols=offered))
        assert client.subprotocol == "alkpubsub.v1"
        await client.close()
        with pytest.raises(InvalidStatus) as other:
            await within(connect(hub.url, subprotocols=["chat", "token.ok"]))  # type: ignore[list-item]
        assert other.value.response.status_code == 400
        # Refused: a browser (it sends an Origin) speaking our protocol gets its
        # WebSocket and then 4403, which it can tell from an outage; others HTTP 403.
        browser = await within(
            connect(hub.url, origin="https://app.example.com", subprotocols=["alkpubsub.v1"])  # type: ignore[arg-type, list-item]
        )
        assert await within(read_until_closed(browser))
        assert browser.close_code == CloseCode.FORBIDDEN
        with pytest.raises(InvalidStatus) as forbidden:
            await within(connect(hub.url, subprotocols=["alkpubsub.v1"]))  # type: ignore[list-item]
        assert forbidden.value.response.status_code == 403
        assert hub.peers == []


async def test_allowed_origins_refuse_other_pages() -> None:
    from alkpubsub.transports.picows import PicowsAcceptor

    acceptor = PicowsAcceptor(port=0, allowed_origins=["https://*.example.com"])
    hub = WebSocketHub(serve=False, backend="picows")
    hub.add_acceptor(acceptor)
    async with hub:
        assert acceptor.url is not None
        with pytest.raises(InvalidStatus) as refused:
            await within(connect(acceptor.url, origin="https://evil.example.org"))  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
        for origin in ("https://app.example.com", None):  # no Origin: not a browser
            client = await within(connect(acceptor.url, origin=origin))  # type: ignore[arg-type]
            await client.close()


# -- frames --------------------------------------------------------------------------------------


async def test_fragmented_messages_are_reassembled_and_held_to_max_frame_bytes() -> None:
    async with WebSocketHub(port=0, backend="picows", max_frame_bytes=1000) as hub:
        heard = Recorder()
        hub.add_event_listener("frag:1", heard)
        client = await within(connect(hub.url, compression=None, max_size=None))
        message = json.dumps({"type": "frag", "id": "1", "payload": "x" * 300})
        await client.send([message[:100], message[100:200], message[200:]])
        await heard.wait_for_count(1)
        assert heard.payloads == ["x" * 300]
        # Every fragment is under the limit, the message is not: 1009.
        big = json.dumps({"type": "frag", "id": "1", "payload": "x" * 2000})
        await client.send([big[i : i + 500] for i in range(0, len(big), 500)])
        assert await within(read_until_closed(client))
        assert client.close_code == 1009
        assert hub.stats.invalid_frames == 1
        assert heard.payloads == ["x" * 300]


async def test_invalid_utf8_text_can_fail_the_connection_with_1007(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from alkpubsub.transports.picows import PicowsLink

    monkeypatch.setattr(PicowsLink, "validate_utf8", True)
    async with WebSocketHub(port=0, backend="picows") as hub:
        heard = Recorder()
        hub.add_event_listener("t:1", heard)
        client = await within(connect(hub.url, compression=None))
        await client.send(b'{"type":"t","id":"1","payload":"\xff"}')  # binary: dropped (B10)
        await client.send('{"type":"t","id":"1","payload":"ü"}')  # valid UTF-8 text
        await heard.wait_for_count(1)
        assert hub.stats.invalid_frames == 1
        await client.send([b'{"type":"t",', b'"id":"1","payload":"\xfe"}'], text=True)  # type: ignore[call-arg]
        assert await within(read_until_closed(client))
        assert client.close_code == 1007
        assert hub.stats.invalid_frames == 2
        assert heard.payloads == ["ü"]


async def test_a_spoke_refuses_a_frame_above_its_limit_with_1009() -> None:
    reasons: list[BaseException | None] = []
    lost = asyncio.Event()

    def on_disconnect(reason: BaseException | None) -> None:
        reasons.append(reason)
        lost.set()

    async with WebSocketHub(port=0, backend="picows") as hub:
        spoke = WebSocketSpoke(
            hub.url,
            backend="picows",
            max_frame_bytes=10_000,
            session=False,  # a session would resend the frame after the reconnect
            on_disconnect=on_disconnect,
        )
        async with spoke:
            spoke.add_event_listener("big:1", Recorder())
            await within(spoke.flush())
            hub.dispatch_event(make_event("big", "1", "x" * 20_000))
            await within(lost.wait())
    assert isinstance(reasons[0], FramingError)
    assert reasons[0].close_code == CloseCode.MESSAGE_TOO_BIG


# -- the link -------------------------------------------------------------------------------------


async def test_link_ends_normally_on_a_normal_close_and_reports_a_lost_connection() -> None:
    from alkpubsub.transports.picows import open_picows_link

    async with WebSocketHub(port=0, backend="picows") as hub:
        link = await within(open_picows_link(hub.url, max_frame_bytes=2**20))
        await link.send([HELLO])
        messages = link.messages()
        assert b'"__welcome"' in await within(anext(messages))
        await within(link.close())
        with pytest.raises(StopAsyncIteration):
            await within(anext(messages))
        assert not link.writable_now()
        with pytest.raises(ConnectionError):
            await link.send([HELLO])

        link = await within(open_picows_link(hub.url, max_frame_bytes=2**20))
        await link.send([HELLO])
        messages = link.messages()
        assert b'"__welcome"' in await within(anext(messages))
        assert link.transport is not None
        link.transport.underlying_transport.abort()  # no close frame either way
        with pytest.raises(ConnectionLostError):
            await within(anext(messages))
        await within(link.close())  # never raises


async def test_a_reader_that_falls_behind_stops_reading_with_bounded_memory() -> None:
    """The hub writes faster than the application reads: the link stops reading
    the socket past RECEIVE_QUEUE_BYTES, the kernel buffers fill, and the hub
    cuts the connection off (B8) instead of the link buffering without bound."""
    from picows import ws_connect

    from alkpubsub.transports.picows import RECEIVE_QUEUE_BYTES, PicowsLink

    cut = asyncio.Event()
    async with WebSocketHub(
        port=0,
        backend="picows",
        max_buffered_bytes=256 * 1024,
        on_backpressure=lambda peer, buffered: cut.set(),
    ) as hub:

        def small_receive_buffer(url: Any) -> socket.socket:
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            return sock

        _, listener = await within(
            ws_connect(
                lambda request, response: PicowsLink(2**20),
                hub.url,
                socket_factory=small_receive_buffer,
                use_aiofastnet=False,
            )
        )
        link: PicowsLink = listener
        await link.send([HELLO, subscribe("flood:1")])
        messages = link.messages()
        assert b'"__welcome"' in await within(anext(messages))
        async with WebSocketSpoke(hub.url, backend="picows") as healthy:
            received = Recorder()
            healthy.add_event_listener("flood:1", received)
            await within(healthy.flush())
            count = 0
            while not cut.is_set() and count < 40_000:
                for _ in range(50):
                    hub.dispatch_event(make_event("flood", "1", {"i": count, "p": "x" * 1000}))
                    count += 1
                await within(healthy.flush())  # the healthy spoke keeps up meanwhile
            assert cut.is_set()
            assert link.reading_paused
            assert RECEIVE_QUEUE_BYTES < link.received_bytes < 2 * RECEIVE_QUEUE_BYTES
            await received.wait_for_count(count, timeout=30)
        # Reading what was queued lets the rest in, up to the hub's 1013.
        with pytest.raises(LinkClosedError) as closed:
            async for _ in messages:
                pass
        assert closed.value.code == CloseCode.TRY_AGAIN_LATER


# -- sessions and heartbeats ---------------------------------------------------------------------


async def test_a_session_resumes_over_picows() -> None:
    sessions: list[SessionInfo] = []
    async with (
        WebSocketHub(port=0, backend="picows") as hub,
        WebSocketSpoke(
            hub.url, backend="picows", on_session=sessions.append, backoff_initial=0.05
        ) as spoke,
    ):
        heard = Recorder()
        spoke.add_event_listener("resume:1", heard)
        await within(spoke.flush())
        spoke_id = spoke.spoke_id
        hub.dispatch_event(make_event("resume", "1", "before"))
        await heard.wait_for_count(1)
        # 1013 keeps the session for a resume (protocol.md §5).
        assert await within(hub.disconnect_peer(spoke_id or "", CloseCode.TRY_AGAIN_LATER))
        hub.dispatch_event(make_event("resume", "1", "while away"))
        spoke.dispatch_event(make_event("resume", "1", "from the spoke"))
        await heard.wait_for_count(3)
        await within(spoke.flush())
        assert sorted(heard.payloads) == ["before", "from the spoke", "while away"]
        assert spoke.spoke_id == spoke_id
        assert [info.resumed for info in sessions] == [False, True]
        assert not sessions[-1].gap


async def test_the_hub_closes_a_silent_spoke_with_4408() -> None:
    async with WebSocketHub(port=0, backend="picows", tick_interval=0.05) as hub:
        client = await within(connect(hub.url, compression=None, ping_interval=None))
        hello = {"type": "__hello", "id": "", "payload": {"protocol": 1, "heartbeat": 0.1}}
        await client.send(json.dumps(hello))
        assert await within(read_until_closed(client))  # the welcome, then __close
        assert client.close_code == CloseCode.HEARTBEAT_TIMEOUT
        assert hub.stats.heartbeat_timeouts == 1


@pytest.fixture
async def frozen_hub() -> AsyncIterator[str]:
    """A hub that welcomes a spoke and then never answers anything."""

    async def welcome_then_freeze(ws: ServerConnection) -> None:
        await ws.recv()
        welcome = {"type": "__welcome", "id": "", "payload": {"protocol": 1, "spoke_id": "s"}}
        await ws.send(json.dumps(welcome))
        await ws.wait_closed()

    async with serve(welcome_then_freeze, "127.0.0.1", 0, ping_interval=None) as server:
        host, port = server.sockets[0].getsockname()[:2]
        yield f"ws://{host}:{port}/"


async def test_a_picows_spoke_notices_a_frozen_hub(frozen_hub: str) -> None:
    reasons: list[BaseException | None] = []
    lost = asyncio.Event()

    def on_disconnect(reason: BaseException | None) -> None:
        reasons.append(reason)
        lost.set()

    spoke = WebSocketSpoke(
        frozen_hub,
        backend="picows",
        heartbeat_interval=0.1,
        heartbeat_timeout=0.3,
        on_disconnect=on_disconnect,
    )
    async with spoke:
        await within(lost.wait(), 5)
    assert isinstance(reasons[0], ConnectionLostError)


# -- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
async def test_cli_hub_on_picows_with_each_event_loop(loop: str) -> None:
    args = ("hub", "--port", "0", "-v", "--ws-backend", "picows", "--loop", loop)
    async with spawn(*args) as hub:
        lines = await read_until(hub.stderr, lambda line: "WebSocket backend" in line)
        expected_loop = "uvloop.Loop" if loop == "uvloop" else "asyncio."
        assert f"WebSocket backend picows, event loop {expected_loop}" in lines[-1]
        url = (await within(hub.stdout.readline(), TIMEOUT)).decode().strip()  # type: ignore[union-attr]
        async with spawn("sub", url, "cli:1", "--count", "1", "--ws-backend", "picows") as sub:
            await subscribed(sub)
            code, _, err = await run("pub", url, "cli", "1", '"hi"', "--ws-backend", "picows")
            assert (code, err) == (0, "")
            out, _ = await within(sub.communicate(), TIMEOUT)
        assert json.loads(out)["payload"] == "hi"
        hub.terminate()
        assert await within(hub.wait(), TIMEOUT) == 0


async def test_cli_loop_auto_is_uvloop_when_installed() -> None:
    async with spawn("hub", "--port", "0", "-v") as hub:
        lines = await read_until(hub.stderr, lambda line: "WebSocket backend" in line)
        assert "event loop uvloop.Loop" in lines[-1]
        url = (await within(hub.stdout.readline(), TIMEOUT)).decode().strip()  # type: ignore[union-attr]
        assert await run("pub", url, "cli", "1") == (0, "", "")  # it serves: it is signal-ready
        hub.terminate()
        assert await within(hub.wait(), TIMEOUT) == 0


class _QueuedPushLink:
    """A PushLink with one message queued before its reader starts."""

    def __init__(self) -> None:
        self.receiver: Any = "never set"

    def push_to(self, receive: Any) -> None:
        self.receiver = receive
        if receive is not None:
            receive(b"queued before the reader")

    async def messages(self) -> AsyncIterator[bytes | str]:
        await asyncio.Event().wait()
        yield b""  # pragma: no cover

    async def send(self, frames: list[bytes]) -> None: ...

    def transport_buffered(self) -> int:
        return 0

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...


async def test_read_loop_stops_the_push_when_its_reader_raises() -> None:
    """A reader that raises on a message queued before it started must not be
    fed by the transport afterwards (the next link's forwarder would get it)."""
    link = _QueuedPushLink()
    assert isinstance(link, PushLink)

    def reader(message: bytes | str) -> None:
        raise ValueError(f"reader failed on {message!r}")

    with pytest.raises(ValueError, match="reader failed"):
        await within(read_loop(link, reader))
    assert link.receiver is None
