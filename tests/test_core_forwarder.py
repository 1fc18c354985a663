"""SubscriptionForwarder, tested without any network (SPEC B4, B6, B7, B13)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from alkpubsub.core import control
from alkpubsub.core.codec import encode_envelope
from alkpubsub.core.envelope import Event, EventEnvelope, make_event
from alkpubsub.core.errors import (
    BackpressureError,
    FrameTooLargeError,
    InvalidTopicError,
    ReservedTypeError,
    TargetClosedError,
)
from alkpubsub.core.forwarder import HubError, Pong, SpokeState, SubscriptionForwarder, Welcome


def frames_of(forwarder: SubscriptionForwarder) -> list[dict[str, Any]]:
    return [json.loads(frame) for frame in forwarder.take_outgoing()]


def kinds(frames: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    return [
        (f["type"], f["payload"].get("topic") if isinstance(f["payload"], dict) else f["payload"])
        for f in frames
    ]


def connected_forwarder(**options: Any) -> SubscriptionForwarder:
    forwarder = SubscriptionForwarder(send_hello=False, **options)
    forwarder.connection_made()
    return forwarder


def test_b6_subscribe_once_on_0_to_1_and_unsubscribe_once_on_1_to_0() -> None:
    forwarder = connected_forwarder()
    a: list[Event] = []
    b: list[Event] = []
    forwarder.add_listener("t:1", a.append)
    forwarder.add_listener("t:1", b.append)
    forwarder.add_listener("t:1", a.append)  # re-add: no-op
    assert kinds(frames_of(forwarder)) == [("__subscribe", "t:1")]
    forwarder.remove_listener("t:1", a.append)
    assert frames_of(forwarder) == []
    forwarder.remove_listener("t:1", b.append)
    assert kinds(frames_of(forwarder)) == [("__unsubscribe", "t:1")]
    forwarder.remove_listener("t:1", b.append)  # already gone
    assert frames_of(forwarder) == []


def test_b6_readd_after_remove_subscribes_again() -> None:
    forwarder = connected_forwarder()
    seen: list[Event] = []
    for _ in range(3):
        forwarder.add_listener("t:1", seen.append)
        forwarder.remove_listener("t:1", seen.append)
    assert kinds(frames_of(forwarder)) == [("__subscribe", "t:1"), ("__unsubscribe", "t:1")] * 3


def test_b6_none_and_unknown_listeners_send_nothing() -> None:
    forwarder = connected_forwarder()
    forwarder.add_listener("t:1", None)
    forwarder.remove_listener("t:1", None)
    forwarder.remove_listener("t:1", print)
    forwarder.remove_listener("never:1", print)
    assert frames_of(forwarder) == []
    assert forwarder.registry.topics() == []


def test_invalid_topic_raises_and_sends_nothing() -> None:
    forwarder = connected_forwarder()
    with pytest.raises(InvalidTopicError):
        forwarder.add_listener("bad topic", print)
    assert frames_of(forwarder) == []


def test_b7_offline_listeners_are_subscribed_on_connect_then_outbox() -> None:
    forwarder = SubscriptionForwarder()
    seen: list[Event] = []
    forwarder.add_listener("a:1", seen.append)
    forwarder.add_listener("b:1", seen.append)
    forwarder.dispatch(make_event("x", "1", "queued-offline"))
    assert forwarder.take_outgoing() == []  # nothing leaves while offline
    assert forwarder.queued_events == 1
    forwarder.connection_made()
    # Only the hello leaves until the hub welcomes the link.
    (hello,) = frames_of(forwarder)
    assert hello["type"] == "__hello"
    assert hello["payload"] == {"protocol": 1, "session": True}
    forwarder.dispatch(make_event("x", "1", "while-greeting"))
    assert frames_of(forwarder) == []
    forwarder.receive(encode_envelope(control.welcome("s-1", token="tok")))
    assert forwarder.state is SpokeState.OPEN
    assert kinds(frames_of(forwarder)) == [
        ("__subscribe", "a:1"),
        ("__subscribe", "b:1"),
        ("x", "queued-offline"),
        ("x", "while-greeting"),
    ]


def test_b7_connection_lost_keeps_unsent_data_and_drops_control() -> None:
    forwarder = connected_forwarder()
    forwarder.add_listener("a:1", print)
    forwarder.dispatch(make_event("x", "1", 1))
    assert forwarder.new_ping() is not None
    forwarder.connection_lost()
    assert forwarder.queued_events == 1
    assert forwarder.new_ping() is None  # offline: no ping
    forwarder.dispatch(make_event("x", "1", 2))
    forwarder.connection_made()
    assert kinds(frames_of(forwarder)) == [("__subscribe", "a:1"), ("x", 1), ("x", 2)]


def test_b7_unsubscribed_while_offline_is_not_resubscribed() -> None:
    forwarder = connected_forwarder()
    forwarder.add_listener("a:1", print)
    frames_of(forwarder)
    forwarder.connection_lost()
    forwarder.remove_listener("a:1", print)
    forwarder.connection_made()
    assert frames_of(forwarder) == []


def test_b7_outbox_overflow_raises_backpressure_and_keeps_what_was_accepted() -> None:
    forwarder = SubscriptionForwarder(outbox_limit=3, send_hello=False)
    for i in range(3):
        forwarder.dispatch(make_event("x", "1", i))
    with pytest.raises(BackpressureError, match="outbox is full"):
        forwarder.dispatch(make_event("x", "1", 99))
    assert not forwarder.drained()
    forwarder.connection_made()
    assert [f["payload"] for f in frames_of(forwarder)] == [0, 1, 2]
    assert forwarder.drained()


def test_b13_connected_queue_is_bounded_in_bytes() -> None:
    forwarder = connected_forwarder(max_outgoing_bytes=1000)
    accepted = 0
    refused: BackpressureError | None = None
    for i in range(1000):
        try:
            forwarder.dispatch(make_event("x", "1", "p" * 50 + str(i)))
        except BackpressureError as exc:
            refused = exc
            break
        accepted += 1
    assert refused is not None
    assert "drain" in str(refused)
    assert 10 <= accepted < 20
    assert forwarder.queued_bytes <= 1000
    assert not forwarder.drained()
    assert len(forwarder.take_outgoing()) == accepted
    assert forwarder.drained()
    forwarder.dispatch(make_event("x", "1", "again"))


def test_take_outgoing_respects_max_bytes_but_always_progresses() -> None:
    forwarder = connected_forwarder()
    for i in range(10):
        forwarder.dispatch(make_event("x", "1", i))
    first = forwarder.take_outgoing(max_bytes=1)
    assert len(first) == 1
    rest = forwarder.take_outgoing(max_bytes=10_000)
    assert len(rest) == 9
    assert forwarder.queued_bytes == 0


def test_wants_write_is_raised_only_when_queue_becomes_non_empty() -> None:
    forwarder = SubscriptionForwarder(send_hello=False)

    def wakes() -> bool:
        wanted, forwarder.wants_write = forwarder.wants_write, False
        return wanted

    forwarder.dispatch(make_event("x", "1"))
    assert not wakes()  # offline
    forwarder.connection_made()
    assert wakes()
    forwarder.dispatch(make_event("x", "1"))
    assert not wakes()  # already non-empty
    forwarder.take_outgoing()
    forwarder.dispatch(make_event("x", "1"))
    assert wakes()


def test_state_transitions() -> None:
    forwarder = SubscriptionForwarder()
    assert forwarder.state is SpokeState.OFFLINE
    forwarder.connecting()
    assert forwarder.state is SpokeState.CONNECTING
    forwarder.connection_lost()
    assert forwarder.state is SpokeState.OFFLINE
    forwarder.connecting()
    forwarder.connection_made()
    assert forwarder.state is SpokeState.CONNECTING  # greeted, not yet welcomed
    forwarder.receive(encode_envelope(control.welcome("s-1")))
    assert forwarder.state is SpokeState.OPEN
    assert forwarder.connected
    forwarder.close()
    assert forwarder.state is SpokeState.CLOSED
    assert forwarder.closed
    forwarder.connection_made()
    forwarder.connection_lost()
    assert forwarder.state is SpokeState.CLOSED


def test_dispatch_validates_before_queueing() -> None:
    forwarder = connected_forwarder(max_frame_bytes=100)
    forged = EventEnvelope.model_construct(type="__subscribe", id="", payload={"topic": "a:b"})
    with pytest.raises(ReservedTypeError):
        forwarder.dispatch(Event.from_envelope(forged))
    with pytest.raises(FrameTooLargeError):
        forwarder.dispatch(make_event("x", "1", "y" * 200))
    assert forwarder.take_outgoing() == []


def test_dispatch_encoded_queues_the_same_bytes_under_the_same_limits() -> None:
    """What a hub's bridge forwards: already encoded, so not encoded again, but
    still bounded (E6, B13) and refused once closed (B11)."""
    forwarder = connected_forwarder(max_frame_bytes=100, max_outgoing_bytes=120)
    frame = encode_envelope(make_event("x", "1", "p").detail)
    assert forwarder.dispatch_encoded(frame)
    with pytest.raises(FrameTooLargeError):
        forwarder.dispatch_encoded(encode_envelope(make_event("x", "1", "y" * 200).detail))
    with pytest.raises(BackpressureError):
        forwarder.dispatch_encoded(encode_envelope(make_event("x", "1", "z" * 60).detail))
    with pytest.raises(ReservedTypeError):  # a control frame in disguise
        forwarder.dispatch_encoded(encode_envelope(control.subscribe("a:b")))
    assert forwarder.take_outgoing() == [frame]
    assert forwarder.stats.sent_events == 1
    forwarder.close()
    with pytest.raises(TargetClosedError):
        forwarder.dispatch_encoded(frame)


def test_b4_ping_pong_nonces() -> None:
    forwarder = connected_forwarder()
    nonce = forwarder.new_ping()
    assert nonce is not None
    frames = frames_of(forwarder)
    assert frames == [{"type": "__ping", "id": nonce, "payload": {}}]
    assert forwarder.receive(encode_envelope(control.pong("unknown"))) is None
    assert forwarder.receive(encode_envelope(control.pong(nonce))) == Pong(nonce)
    # A duplicate pong is ignored.
    assert forwarder.receive(encode_envelope(control.pong(nonce))) is None


def test_hub_ping_is_answered() -> None:
    forwarder = connected_forwarder()
    forwarder.receive(encode_envelope(control.ping("n7")))
    assert frames_of(forwarder) == [{"type": "__pong", "id": "n7", "payload": {}}]


def test_receive_delivers_data_and_never_control_to_listeners() -> None:
    forwarder = SubscriptionForwarder()
    forwarder.connection_made()
    seen: list[Event] = []
    forwarder.add_listener("t:1", seen.append)
    forwarder.add_listener("__subscribe:", seen.append)
    assert forwarder.receive(encode_envelope(control.welcome("spoke-9"))) == Welcome("spoke-9")
    forwarder.receive(b'{"type":"__subscribe","id":"","payload":{"topic":"t:1"}}')
    forwarder.receive(b'{"type":"__future_control","id":"","payload":null}')
    forwarder.receive(b'{"type":"t","id":"1","payload":5,"unknown":"ignored"}')
    assert [(e.type, e.detail.payload) for e in seen] == [("t:1", 5)]
    assert forwarder.spoke_id == "spoke-9"
    assert forwarder.stats.unknown_control == 2
    assert forwarder.stats.received_events == 1


def test_b10_bad_frames_are_counted_not_raised() -> None:
    forwarder = connected_forwarder()
    for data in [b"{", b"[]", b'{"type":1}', b"\xff", ""]:
        forwarder.receive(data)
    assert forwarder.stats.invalid_frames == 5


def test_hub_errors_are_reported() -> None:
    forwarder = connected_forwarder()
    event = forwarder.receive(encode_envelope(control.error("forbidden", "no", "t:1")))
    assert event == HubError("forbidden", "no", "t:1")
    assert forwarder.stats.hub_errors == 1
    assert forwarder.receive(b'{"type":"__error","id":"","payload":7}') == HubError(
        "unknown", "", None
    )


def test_b11_close_makes_dispatch_raise_and_listeners_no_ops() -> None:
    forwarder = connected_forwarder()
    forwarder.add_listener("t:1", print)
    forwarder.close()
    with pytest.raises(TargetClosedError):
        forwarder.dispatch(make_event("x", "1"))
    forwarder.add_listener("t:2", print)
    forwarder.remove_listener("t:1", print)
    assert forwarder.take_outgoing() == []
    assert forwarder.registry.topics() == []
