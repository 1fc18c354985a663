"""Topic history and recovery from a stream position (docs/protocol.md §5),
over a real WebSocket hub and spokes."""

from __future__ import annotations

from typing import Any

import pytest

from alkpubsub import create_pubsub, make_event
from alkpubsub.core.history import HistoryPolicy, StreamPosition
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke

HISTORY = {"chat:*": HistoryPolicy(max_events=100)}


async def take(subscription: Any, count: int) -> list[Any]:
    return [(await within(subscription.next())).payload for _ in range(count)]


async def test_a_subscriber_resumes_from_its_last_position() -> None:
    async with (
        WebSocketHub(port=0, history=HISTORY) as hub,
        WebSocketSpoke(hub.url) as publisher,
        WebSocketSpoke(hub.url) as reader,
    ):
        pubsub = create_pubsub(reader)
        first = pubsub.subscribe("chat", "room", since=None)  # positions from now
        await within(reader.flush())
        for i in range(5):
            publisher.dispatch_event(make_event("chat", "room", i))
        assert await take(first, 3) == [0, 1, 2]
        position = first.position
        assert position is not None
        assert position.offset == 3
        await first.aclose()
        await within(reader.flush())
        for i in range(5, 8):
            publisher.dispatch_event(make_event("chat", "room", i))
        await within(publisher.flush())
        # A new subscription from where the first one stopped reading: 3..7,
        # recovered from the hub's history, then live events.
        second = pubsub.subscribe("chat", "room", since=position)
        assert await take(second, 5) == [3, 4, 5, 6, 7]
        assert second.recovered is True
        publisher.dispatch_event(make_event("chat", "room", "live"))
        assert await take(second, 1) == ["live"]
        assert second.position == StreamPosition(position.epoch, 9)


async def test_recovery_fails_truthfully_for_another_epoch_or_too_old() -> None:
    async with (
        WebSocketHub(port=0, history={"chat:*": HistoryPolicy(max_events=2)}) as hub,
        WebSocketSpoke(hub.url) as publisher,
        WebSocketSpoke(hub.url) as reader,
    ):
        pubsub = create_pubsub(reader)
        stale = pubsub.subscribe("chat", "room", since="other-hub.1:7")
        await within(reader.flush())
        assert stale.recovered is False
        await stale.aclose()
        tracking = pubsub.subscribe("chat", "room", since=None)
        await within(reader.flush())
        publisher.dispatch_event(make_event("chat", "room", "a"))
        assert await take(tracking, 1) == ["a"]
        start = tracking.position
        await tracking.aclose()
        for i in range(5):  # more than the history keeps
            publisher.dispatch_event(make_event("chat", "room", i))
        await within(publisher.flush())
        late = pubsub.subscribe("chat", "room", since=start)
        await within(reader.flush())
        assert late.recovered is False  # told, not silently partial
        publisher.dispatch_event(make_event("chat", "room", "next"))
        assert await take(late, 1) == ["next"]


async def test_a_new_session_recovers_what_it_missed_by_itself() -> None:
    """No session to resume (a plain client): after a reconnect the spoke asks
    for what came after its last position, and gets it, in order, once."""
    async with (
        WebSocketHub(port=0, history=HISTORY) as hub,
        WebSocketSpoke(hub.url) as publisher,
        WebSocketSpoke(hub.url, session=False, backoff_initial=0.05, backoff_max=0.1) as reader,
    ):
        heard = Recorder("reader")
        reader.add_event_listener("chat:room", heard, since=None)
        await within(reader.flush())
        publisher.dispatch_event(make_event("chat", "room", 0))
        await heard.wait_for_count(1)
        spoke_id = reader.spoke_id
        assert spoke_id is not None
        await hub.disconnect_peer(spoke_id, 4000, "go and come back")
        await within(reader.wait_disconnected())
        for i in range(1, 4):  # published while the reader is away
            publisher.dispatch_event(make_event("chat", "room", i))
        await within(publisher.flush())
        await within(reader.wait_connected())
        await within(reader.flush())
        publisher.dispatch_event(make_event("chat", "room", 4))
        await heard.wait_for_count(5)
        assert heard.payloads == [0, 1, 2, 3, 4]
        assert reader.stream_state("chat:room")[1] is True
        assert [event.position.offset for event in heard.events if event.position] == [
            1,
            2,
            3,
            4,
            5,
        ]


async def test_since_needs_the_topics_first_listener_and_a_history_target() -> None:
    async with WebSocketHub(port=0, history=HISTORY) as hub, WebSocketSpoke(hub.url) as reader:
        reader.add_event_listener("chat:room", Recorder())
        with pytest.raises(ValueError, match="first listener"):
            reader.add_event_listener("chat:room", Recorder("second"), since=None)
        with pytest.raises(ValueError, match="stream position"):
            reader.add_event_listener("chat:other", Recorder(), since="nonsense")
    memory = create_pubsub()
    with pytest.raises(TypeError, match="history"):
        memory.subscribe("chat", "room", since=None)


async def test_a_topic_without_history_says_so() -> None:
    async with (
        WebSocketHub(port=0, history=HISTORY) as hub,
        WebSocketSpoke(hub.url) as publisher,
        WebSocketSpoke(hub.url) as reader,
    ):
        subscription = create_pubsub(reader).subscribe("job", "1", since=None)
        await within(reader.flush())
        assert subscription.recovered is False
        publisher.dispatch_event(make_event("job", "1", "x"))
        assert await take(subscription, 1) == ["x"]
        assert subscription.position is None
