"""PeerSession, the sans-I/O side of a worker channel, tested without pipes
(SPEC B1, B2, B6, B10, B13, C1, C2)."""

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
    ReservedTypeError,
    TargetClosedError,
)
from alkpubsub.core.forwarder import Closing, HubError, Pong
from alkpubsub.core.peer import PeerSession


def sent(session: PeerSession) -> list[tuple[str, Any]]:
    frames = [json.loads(frame) for frame in session.take_outgoing()]
    return [(frame["type"], frame["payload"]) for frame in frames]


def frame(envelope: EventEnvelope) -> bytes:
    return encode_envelope(envelope)


def connected(**options: Any) -> PeerSession:
    session = PeerSession(**options)
    session.connection_made()
    session.take_outgoing()  # the hello
    return session


def test_connection_made_sends_hello_then_subscriptions_then_the_outbox() -> None:
    session = PeerSession()
    heard: list[Event] = []
    session.add_listener("mine:1", heard.append)
    session.dispatch(make_event("early", "1", "before the channel"))
    assert heard == []  # no local listener for early:1
    session.connection_made()
    assert sent(session) == [
        ("__hello", {"protocol": control.PROTOCOL_VERSION}),
        ("__subscribe", {"topic": "mine:1"}),
        ("early", "before the channel"),  # interest unknown then: not filtered
    ]


def test_dispatch_calls_local_listeners_once_and_sends_only_what_the_peer_wants() -> None:
    session = connected()
    local: list[Any] = []
    session.add_listener("t:1", lambda event: local.append(event.detail.payload))
    assert sent(session) == [("__subscribe", {"topic": "t:1"})]
    session.receive(frame(control.hello()))  # the peer speaks subscriptions
    session.dispatch(make_event("t", "1", "peer not subscribed"))
    assert sent(session) == []
    assert session.stats.filtered_events == 1
    assert session.receive(frame(control.subscribe("t:1"))) is None
    session.dispatch(make_event("t", "1", "peer subscribed"))
    assert sent(session) == [("t", "peer subscribed")]
    assert local == ["peer not subscribed", "peer subscribed"]
    assert session.stats.sent_events == 1


def test_a_peer_that_never_declared_subscriptions_gets_everything() -> None:
    """C2: a bare peer that only sends data (the seed's worker) receives every
    event; its first __hello or __subscribe turns filtering on."""
    session = connected()
    session.dispatch(make_event("any", "1", 1))
    assert sent(session) == [("any", 1)]
    session.receive(frame(control.unsubscribe("other:1")))
    session.dispatch(make_event("any", "1", 2))
    assert sent(session) == []
    assert session.stats.filtered_events == 1


def test_filtered_dispatches_are_checked_like_sent_ones() -> None:
    """E4 and E6 do not depend on whether the peer listens."""
    session = connected(max_frame_bytes=100)
    session.receive(frame(control.hello()))
    with pytest.raises(FrameTooLargeError):
        session.dispatch(make_event("big", "1", "x" * 200))
    forged = EventEnvelope.model_construct(type="__subscribe", id="", payload={})
    with pytest.raises(ReservedTypeError):
        session.dispatch(Event.from_envelope(forged))
    assert session.stats.filtered_events == 0


def test_backpressure_delivers_nothing_locally() -> None:
    """A refused dispatch has no effect at all, so a publisher that drains and
    retries delivers the event exactly once (B13)."""
    session = connected(max_outgoing_bytes=200)
    session.receive(frame(control.subscribe("t:1")))
    local: list[Any] = []
    session.add_listener("t:1", lambda event: local.append(event.detail.payload))
    session.take_outgoing()
    session.dispatch(make_event("t", "1", "a" * 150))
    with pytest.raises(BackpressureError):
        session.dispatch(make_event("t", "1", "b" * 150))
    assert local == ["a" * 150]


def test_peer_subscriptions_are_a_set_and_bad_ones_are_counted() -> None:
    session = connected()
    session.receive(frame(control.subscribe("a:1")))
    session.receive(frame(control.subscribe("a:1")))  # a foreign peer may repeat
    session.receive(frame(control.unsubscribe("never:1")))
    for payload in [{"topic": ""}, {"topic": "no-colon"}, {"topic": 3}, "text", None]:
        bad = EventEnvelope.model_construct(type="__subscribe", id="", payload=payload)
        session.receive(frame(bad))
    assert session.peer_topics == {"a:1"}
    assert session.stats.invalid_subscriptions == 5
    session.receive(frame(control.unsubscribe("a:1")))
    assert session.peer_topics == set()


def test_too_many_peer_topics_is_answered_with_an_error_frame() -> None:
    session = connected(max_peer_topics=1)
    session.receive(frame(control.subscribe("a:1")))
    session.receive(frame(control.subscribe("b:1")))
    assert session.wants_write
    assert sent(session) == [
        (
            "__error",
            {"code": "too_many_topics", "message": "at most 1 topics per channel", "topic": "b:1"},
        ),
    ]
    assert session.peer_topics == {"a:1"}


def test_receive_data_control_and_garbage() -> None:
    session = connected()
    heard: list[Any] = []
    session.add_listener("d:1", lambda event: heard.append(event.detail.payload))
    session.take_outgoing()
    assert session.receive(frame(EventEnvelope(type="d", id="1", payload=1))) is None
    assert session.receive(b"{not json") is None
    assert session.receive(b'{"type": "d"}') is None
    assert session.receive(frame(control.hello())) is None
    assert session.peer_protocol == control.PROTOCOL_VERSION
    assert session.receive(frame(control.ping("n1"))) is None
    assert sent(session) == [("__pong", {})]
    nonce = session.new_ping()
    assert nonce is not None
    session.take_outgoing()
    assert session.receive(frame(control.pong(nonce))) == Pong(nonce)
    assert session.receive(frame(control.error("forbidden", "no"))) == HubError(
        "forbidden", "no", None
    )
    assert session.receive(frame(control.close(4001, "bye"))) == Closing(4001, "bye")
    unknown = EventEnvelope.model_construct(type="__future", id="", payload={})
    assert session.receive(frame(unknown)) is None
    assert heard == [1]
    stats = session.stats
    assert (stats.received_events, stats.invalid_frames, stats.unknown_control) == (1, 2, 1)


def test_closed_session_refuses_dispatch_and_ignores_input() -> None:
    session = connected()
    heard: list[Event] = []
    session.add_listener("d:1", heard.append)
    session.close()
    with pytest.raises(TargetClosedError):
        session.dispatch(make_event("d", "1"))
    assert session.receive(frame(EventEnvelope(type="d", id="1"))) is None
    assert session.take_outgoing() == []
    assert heard == []


def test_close_frame_is_a_close_envelope() -> None:
    session = connected()
    assert json.loads(session.close_frame(1009, "too big")) == {
        "type": "__close",
        "id": "",
        "payload": {"code": 1009, "reason": "too big"},
    }


@pytest.mark.parametrize(
    ("bad", "code"), [(b"\x00\x00\x00\x00", 1002), (b"\xff\xff\xff\xff", 1009)]
)
def test_framing_error_keeps_the_frames_before_the_violation(bad: bytes, code: int) -> None:
    """FrameDecoder (core/codec.py): whole frames of the chunk that preceded a
    bad length prefix come with the error, so a receiver can deliver them."""
    from alkpubsub.core.codec import FrameDecoder, pack_frames
    from alkpubsub.core.errors import FramingError

    decoder = FrameDecoder()
    with pytest.raises(FramingError) as info:
        decoder.feed(pack_frames([b"one", b"two"]) + bad + b"rest")
    assert info.value.frames == [b"one", b"two"]
    assert info.value.close_code == code
    with pytest.raises(FramingError):
        decoder.feed(b"more")
