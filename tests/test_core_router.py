"""HubRouter, tested without any network (SPEC B8, B12, C1, C2, H1-H3)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alkpubsub.core import control
from alkpubsub.core.close import CloseCode
from alkpubsub.core.codec import encode_envelope
from alkpubsub.core.envelope import Event, make_event
from alkpubsub.core.errors import FrameTooLargeError, TargetClosedError
from alkpubsub.core.router import (
    ConnectionState,
    HubConnection,
    HubRouter,
    Peer,
    PublishRequest,
    SubscribeRequest,
)


def sub(topic: Any) -> bytes:
    return json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": topic}}).encode()


def unsub(topic: str) -> bytes:
    return json.dumps({"type": "__unsubscribe", "id": "", "payload": {"topic": topic}}).encode()


def data(type_: str, id_: str, payload: Any = None) -> bytes:
    return encode_envelope(make_event(type_, id_, payload).detail)


class Hub:
    """A router and what a shell would pull from it."""

    def __init__(self, **options: Any) -> None:
        self.router = HubRouter(**options)
        self._cuts: list[HubConnection] = []
        self._wakes: dict[str, int] = {}

    @property
    def overflowed(self) -> list[HubConnection]:
        self._cuts += self.router.take_cuts()
        return self._cuts

    @property
    def wakes(self) -> dict[str, int]:
        for conn in self.router.take_ready():
            self._wakes[conn.spoke_id] += 1
        return self._wakes

    def connect(self, name: str, **hello: Any) -> HubConnection:
        """A connection that greeted the hub with ``__hello`` (options: session...)."""
        self._wakes[name] = 0
        conn = self.router.connect(Peer(spoke_id=name, transport="test"))
        assert self.router.receive(conn, encode_envelope(control.hello(**hello))) is None
        return conn

    def out(self, conn: HubConnection) -> list[dict[str, Any]]:
        return [json.loads(frame) for frame in self.router.take_outgoing(conn)]

    def subscribe(self, conn: HubConnection, topic: str) -> None:
        request = self.router.receive(conn, sub(topic))
        assert request == SubscribeRequest(topic)
        self.router.apply(conn, request)


def test_welcome_is_the_first_frame() -> None:
    hub = Hub()
    conn = hub.connect("s1")
    assert hub.wakes["s1"] == 1
    assert hub.out(conn) == [
        {"type": "__welcome", "id": "", "payload": {"protocol": 1, "spoke_id": "s1"}}
    ]


def test_subscribe_needs_authorization_then_routes_by_full_topic() -> None:
    hub = Hub()
    a, b = hub.connect("a"), hub.connect("b")
    hub.out(a), hub.out(b)
    hub.subscribe(a, "t:1")
    hub.subscribe(b, "t:2")
    request = hub.router.receive(b, data("t", "1", "hello"))
    assert isinstance(request, PublishRequest)
    assert request.topic == "t:1"
    hub.router.apply(b, request)
    assert hub.out(a) == [{"type": "t", "id": "1", "payload": "hello"}]
    assert hub.out(b) == []  # B2: not subscribed to t:1


def test_h2_sender_receives_its_own_event_if_subscribed() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    hub.subscribe(a, "t:1")
    hub.router.apply(a, hub.router.receive(a, data("t", "1")))  # type: ignore[arg-type]
    assert [f["type"] for f in hub.out(a)] == ["t"]


def test_h3_each_envelope_is_encoded_once() -> None:
    hub = Hub()
    conns = [hub.connect(f"s{i}") for i in range(5)]
    for conn in conns:
        hub.out(conn)
        hub.subscribe(conn, "t:1")
    hub.router.dispatch(make_event("t", "1", {"big": "x" * 100}))
    frames = [hub.router.take_outgoing(conn)[0] for conn in conns]
    assert all(frame is frames[0] for frame in frames)


def test_h1_hub_dispatch_reaches_local_listeners_and_subscribers() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    hub.subscribe(a, "t:1")
    local: list[Event] = []
    hub.router.registry.add("t:1", local.append)
    hub.router.dispatch(make_event("t", "1", 1))
    assert [e.detail.payload for e in local] == [1]
    assert hub.out(a)[0]["payload"] == 1
    # events from spokes reach local listeners too
    hub.router.apply(a, hub.router.receive(a, data("t", "1", 2)))  # type: ignore[arg-type]
    assert [e.detail.payload for e in local] == [1, 2]


def test_unsubscribe_is_applied_directly() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    hub.subscribe(a, "t:1")
    assert hub.router.receive(a, unsub("t:1")) is None
    assert "t:1" not in hub.router.subscriptions
    hub.router.dispatch(make_event("t", "1"))
    assert hub.out(a) == []
    assert hub.router.receive(a, unsub("t:1")) is None  # unknown: no-op


def test_duplicate_subscribe_needs_no_second_authorization() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.subscribe(a, "t:1")
    assert hub.router.receive(a, sub("t:1")) is None


@pytest.mark.parametrize(
    "message",
    [
        sub(""),
        sub(5),
        sub("no-colon"),
        sub("bad type:1"),
        b'{"type":"__subscribe","id":"","payload":null}',
        b'{"type":"__subscribe","id":"","payload":{}}',
        b'{"type":"__unsubscribe","id":"","payload":"t:1"}',
    ],
)
def test_c1_bad_subscription_frames_are_ignored_and_counted(message: bytes) -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    assert hub.router.receive(a, message) is None
    assert hub.router.stats.invalid_control == 1
    assert hub.router.subscriptions == {}
    # The spoke learns why (rate-limited per connection).
    (complaint,) = hub.out(a)
    assert complaint["type"] == "__error"
    assert complaint["payload"]["code"] == "invalid_control"


def test_c2_unknown_control_is_ignored_and_hello_pong_accepted() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    assert hub.router.receive(a, b'{"type":"__future","id":"","payload":{}}') is None
    assert hub.router.receive(a, encode_envelope(control.hello())) is None
    assert hub.router.receive(a, encode_envelope(control.pong("1"))) is None
    assert hub.router.stats.unknown_control == 1
    assert a.greeted
    assert hub.out(a) == []


def test_b10_garbage_is_dropped_and_counted() -> None:
    hub = Hub()
    a = hub.connect("a")
    for message in [b"nope", b"[]", b"\xff\xfe", b'{"type":"t"}', b'{"type":"a b","id":""}']:
        assert hub.router.receive(a, message) is None
    assert hub.router.stats.invalid_frames == 5


def test_b4_ping_is_answered_in_order() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    hub.subscribe(a, "t:1")
    hub.router.dispatch(make_event("t", "1"))
    hub.router.receive(a, encode_envelope(control.ping("42")))
    assert [f["type"] for f in hub.out(a)] == ["t", "__pong"]


def test_b12_direct_topics_belong_to_their_spoke() -> None:
    hub = Hub()
    a, b = hub.connect("a"), hub.connect("b")
    hub.out(a), hub.out(b)
    hub.subscribe(a, "direct:a")
    assert hub.router.receive(b, sub("direct:a")) is None
    (error,) = hub.out(b)
    assert error["type"] == "__error"
    assert error["payload"]["code"] == "forbidden"
    assert error["payload"]["topic"] == "direct:a"
    assert hub.router.stats.refused == 1
    hub.router.apply(b, hub.router.receive(b, data("direct", "a", "hi")))  # type: ignore[arg-type]
    assert hub.out(a) == [{"type": "direct", "id": "a", "payload": "hi"}]


def test_b12_refusal_sends_forbidden_and_has_no_other_effect() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    request = hub.router.receive(a, sub("secret:1"))
    assert isinstance(request, SubscribeRequest)
    hub.router.refuse(a, request.action, request.topic)
    assert hub.out(a)[0]["payload"]["code"] == "forbidden"
    assert hub.router.subscriptions == {}


def test_topic_cap_per_connection() -> None:
    hub = Hub(max_topics_per_connection=2)
    a = hub.connect("a")
    hub.out(a)
    hub.subscribe(a, "t:1")
    hub.subscribe(a, "t:2")
    assert hub.router.receive(a, sub("t:3")) is None
    assert hub.out(a)[0]["payload"]["code"] == "too_many_topics"
    assert a.topics == {"t:1", "t:2"}


def test_b8_backpressure_decision_cuts_only_the_slow_connection() -> None:
    hub = Hub(max_buffered_bytes=2000)
    slow, fast = hub.connect("slow"), hub.connect("fast")
    hub.out(slow), hub.out(fast)
    hub.subscribe(slow, "t:1")
    hub.subscribe(fast, "t:1")
    for i in range(100):
        hub.router.dispatch(make_event("t", "1", "x" * 40 + str(i)))
        hub.out(fast)  # the fast spoke keeps up
    assert hub.overflowed == [slow]  # reported exactly once
    assert slow.state is ConnectionState.CLOSING
    assert slow.close_code == CloseCode.TRY_AGAIN_LATER
    assert hub.router.stats.backpressure_disconnects == 1
    # Nothing more is written to it but the announcement of the close.
    assert [frame["type"] for frame in hub.out(slow)] == ["__close"]
    hub.router.dispatch(make_event("t", "1", "after"))
    assert hub.out(fast)[-1]["payload"] == "after"


def test_b8_transport_buffer_counts_toward_the_limit() -> None:
    hub = Hub(max_buffered_bytes=1000)
    a = hub.connect("a")
    hub.out(a)
    hub.router.report_transport_buffered(a, 999)
    assert hub.overflowed == []
    hub.router.report_transport_buffered(a, 1001)
    assert hub.overflowed == [a]


def test_disconnect_cleans_subscriptions_and_is_idempotent() -> None:
    hub = Hub()
    a, b = hub.connect("a"), hub.connect("b")
    hub.subscribe(a, "t:1")
    hub.subscribe(b, "t:1")
    assert hub.router.disconnect(a) is True
    assert hub.router.disconnect(a) is False
    assert list(hub.router.subscriptions["t:1"]) == [b]
    hub.router.disconnect(b)
    assert hub.router.subscriptions == {}
    assert hub.router.receive(a, sub("t:9")) is None


def test_e6_hub_dispatch_refuses_large_frames() -> None:
    hub = Hub(max_frame_bytes=100)
    with pytest.raises(FrameTooLargeError):
        hub.router.dispatch(make_event("t", "1", "x" * 200))


def test_take_outgoing_in_slices() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.out(a)
    hub.subscribe(a, "t:1")
    for i in range(10):
        hub.router.dispatch(make_event("t", "1", i))
    first = hub.router.take_outgoing(a, max_bytes=60)
    assert 1 <= len(first) < 10
    rest = hub.router.take_outgoing(a)
    assert len(first) + len(rest) == 10
    assert a.queue.nbytes == 0


def test_b11_closed_router_refuses() -> None:
    hub = Hub()
    a = hub.connect("a")
    hub.router.close()
    assert hub.router.connections == {}
    assert a.state is ConnectionState.GONE
    with pytest.raises(TargetClosedError):
        hub.router.dispatch(make_event("t", "1"))
    with pytest.raises(TargetClosedError):
        hub.connect("b")


def test_spoke_ids_are_unguessable_and_unique() -> None:
    router = HubRouter()
    ids = {router.new_spoke_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(spoke_id) >= 16 for spoke_id in ids)


def test_peer_repr_redacts_secrets() -> None:
    peer = Peer(
        spoke_id="a",
        transport="ws",
        headers={"Authorization": "Bearer s3cret", "Cookie": "sid=s3cret", "X-Id": "visible"},
    )
    text = repr(peer)
    assert "s3cret" not in text
    assert "visible" in text
