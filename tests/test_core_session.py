"""Sessions (docs/protocol.md §5) tested without a network: spokes' forwarders
wired to a hub's router through in-memory links that can lose what is in flight."""

from __future__ import annotations

import json
from typing import Any

from alkpubsub.core.close import CloseCode
from alkpubsub.core.envelope import Event, make_event
from alkpubsub.core.forwarder import SpokeState, SubscriptionForwarder, Welcome
from alkpubsub.core.router import ConnectionState, HubConnection, HubRouter, Peer, Resumed
from alkpubsub.core.session import ACK_EVERY_FRAMES, Liveness


class Spoke:
    """A forwarder and the frames it received."""

    def __init__(self, **options: Any) -> None:
        self.forwarder = SubscriptionForwarder(**options)
        self.seen: list[Any] = []
        self.welcomes: list[Welcome] = []

    def listen(self, topic: str) -> None:
        self.forwarder.add_listener(topic, self.record)

    def record(self, event: Event) -> None:
        self.seen.append(event.detail.payload)

    def publish(self, *payloads: Any, topic: str = "t:1") -> None:
        type_, id_ = topic.split(":")
        for payload in payloads:
            self.forwarder.dispatch(make_event(type_, id_, payload))


class Wire:
    """One link between a spoke and the router; ``cut()`` loses what is in flight."""

    def __init__(self, router: HubRouter, spoke: Spoke, name: str) -> None:
        self.router, self.spoke = router, spoke
        self.conn: HubConnection = router.connect(Peer(spoke_id=name, transport="test"))
        spoke.forwarder.connection_made()
        self.up = True

    def pump(self, *, to_hub: int | None = None, to_spoke: int | None = None) -> None:
        """Deliver frames both ways until quiet (or only up to a count)."""
        moved = True
        while moved and self.up:
            moved = False
            frames = self.spoke.forwarder.take_outgoing()
            if to_hub is not None:
                frames, to_hub = frames[:to_hub], to_hub - len(frames[:to_hub])
            for frame in frames:
                moved = True
                result = self.router.receive(self.conn, frame)
                if isinstance(result, Resumed):
                    self.conn = result.session
                elif result is not None:
                    self.router.apply(self.conn, result)
            self.router.take_ready()
            frames = self.router.take_outgoing(self.conn)
            if to_spoke is not None:
                frames, to_spoke = frames[:to_spoke], to_spoke - len(frames[:to_spoke])
            for frame in frames:
                moved = True
                event = self.spoke.forwarder.receive(frame)
                if isinstance(event, Welcome):
                    self.spoke.welcomes.append(event)

    def cut(self) -> None:
        """The link dies: nothing more crosses it, in either direction."""
        self.up = False
        self.spoke.forwarder.connection_lost()
        self.router.link_lost(self.conn, normal_close=False)


def test_handshake_grants_a_session_and_welcomes_before_anything_else() -> None:
    router, spoke = HubRouter(), Spoke()
    spoke.listen("t:1")
    spoke.publish("early")
    wire = Wire(router, spoke, "a")
    (hello,) = [json.loads(f) for f in spoke.forwarder.take_outgoing()]
    assert hello["type"] == "__hello"
    assert hello["payload"]["session"] is True
    router.receive(wire.conn, json.dumps(hello).encode())
    (welcome,) = [json.loads(f) for f in router.take_outgoing(wire.conn)]
    assert welcome["type"] == "__welcome"
    assert welcome["payload"]["spoke_id"] == "a"
    token = welcome["payload"]["token"]
    assert len(token) >= 32
    spoke.forwarder.receive(json.dumps(welcome).encode())
    assert spoke.forwarder.state is SpokeState.OPEN
    assert spoke.forwarder.token == token
    wire.pump()
    assert spoke.seen == ["early"]  # subscribed before the outbox was sent (B7)


def test_acks_confirm_frames_both_ways() -> None:
    router, spoke = HubRouter(), Spoke()
    spoke.listen("t:1")
    wire = Wire(router, spoke, "a")
    wire.pump()
    spoke.publish(*range(ACK_EVERY_FRAMES * 3))
    wire.pump()
    assert spoke.seen == list(range(ACK_EVERY_FRAMES * 3))
    # Each side confirmed the other's frames (an __ack every ACK_EVERY_FRAMES).
    assert len(spoke.forwarder.sent) < ACK_EVERY_FRAMES
    assert wire.conn.sent is not None
    assert len(wire.conn.sent) < ACK_EVERY_FRAMES
    # A ping carries the spoke's count, its pong the hub's: both logs empty.
    spoke.forwarder.new_ping()
    wire.pump()
    assert len(spoke.forwarder.sent) == 0
    spoke.forwarder.new_ping()
    wire.pump()
    assert len(wire.conn.sent) == 0
    assert spoke.forwarder.settled()


def test_resume_loses_nothing_and_duplicates_nothing_either_way() -> None:
    router = HubRouter()
    publisher, subscriber = Spoke(), Spoke()
    subscriber.listen("t:1")
    pub_wire, sub_wire = Wire(router, publisher, "p"), Wire(router, subscriber, "s")
    pub_wire.pump()
    sub_wire.pump()
    sent = 0
    for round_ in range(20):
        publisher.publish(*range(sent, sent + 37))
        sent += 37
        # Part of what is in flight gets through, then both links die.
        pub_wire.pump(to_hub=round_ % 7 + 1)
        sub_wire.pump(to_spoke=round_ % 5 + 2)
        pub_wire.cut()
        sub_wire.cut()
        pub_wire, sub_wire = (
            Wire(router, publisher, f"p{round_}"),
            Wire(router, subscriber, f"s{round_}"),
        )
        pub_wire.pump()
        sub_wire.pump()
    pub_wire.pump()
    sub_wire.pump()
    assert subscriber.seen == list(range(sent))
    assert [w.resumed for w in subscriber.welcomes] == [False] + [True] * 20
    assert not any(w.gap for w in subscriber.welcomes)
    assert publisher.forwarder.spoke_id == "p"  # the spoke id survives
    assert router.stats.sessions_resumed == 40
    assert set(router.connections) == {"p", "s"}


def test_a_token_is_single_use_and_refused_while_its_session_is_live() -> None:
    router, spoke = HubRouter(), Spoke()
    wire = Wire(router, spoke, "a")
    wire.pump()
    token = spoke.forwarder.token
    assert token is not None
    # A thief presents the token while the spoke is connected: refused.
    thief = Spoke()
    thief.forwarder.token = token
    thief_wire = Wire(router, thief, "t")
    thief_wire.pump()
    assert thief_wire.conn.close_code == CloseCode.SESSION_IN_USE
    assert router.take_cuts() == [thief_wire.conn]
    # After a resume the old token is worthless.
    wire.cut()
    wire = Wire(router, spoke, "a2")
    wire.pump()
    assert spoke.welcomes[-1].resumed
    assert spoke.forwarder.token != token
    assert token not in router.sessions


def test_failed_resume_reports_what_may_be_lost_and_the_gap() -> None:
    router, spoke = HubRouter(), Spoke()
    spoke.listen("t:1")
    wire = Wire(router, spoke, "a")
    wire.pump()
    spoke.publish(1, 2, 3)
    spoke.forwarder.take_outgoing()  # written, never processed: the hub dies
    wire.cut()
    restarted = HubRouter()  # a new hub process knows no session
    Wire(restarted, spoke, "b").pump()
    welcome = spoke.welcomes[-1]
    assert not welcome.resumed
    assert welcome.gap
    assert [json.loads(f)["payload"] for f in welcome.undelivered] == [1, 2, 3]
    assert spoke.forwarder.stats.undelivered_events == 3
    assert spoke.forwarder.spoke_id == "b"


def test_grace_period_expires_and_frees_the_session() -> None:
    router = HubRouter(session_grace=3, tick_interval=1)
    subscriber, publisher = Spoke(), Spoke()
    subscriber.listen("t:1")
    sub_wire, pub_wire = Wire(router, subscriber, "s"), Wire(router, publisher, "p")
    sub_wire.pump()
    pub_wire.pump()
    sub_wire.cut()
    publisher.publish("while away")
    pub_wire.pump()
    session = router.connections["s"]
    assert session.state is ConnectionState.DETACHED
    assert session.queue.nbytes > 0  # kept for the resume
    for _ in range(3):
        router.tick()
    assert "s" not in router.connections
    assert session.state is ConnectionState.GONE
    assert session.queue.nbytes == 0
    assert router.subscriptions == {}
    assert router.stats.sessions_expired == 1


def test_detached_session_over_budget_resumes_with_a_gap() -> None:
    router = HubRouter(max_buffered_bytes=2000)
    subscriber, publisher = Spoke(), Spoke(max_outgoing_bytes=100_000)
    subscriber.listen("t:1")
    sub_wire, pub_wire = Wire(router, subscriber, "s"), Wire(router, publisher, "p")
    sub_wire.pump()
    pub_wire.pump()
    sub_wire.cut()
    publisher.publish(*range(200))
    pub_wire.pump()
    assert router.connections["s"].buffered_bytes <= 2000
    Wire(router, subscriber, "s2").pump()
    welcome = subscriber.welcomes[-1]
    assert welcome.resumed
    assert welcome.gap
    assert subscriber.seen == sorted(subscriber.seen)
    assert subscriber.seen[-1] == 199  # the newest are kept
    assert len(subscriber.seen) < 200


def test_normal_close_ends_the_session() -> None:
    router, spoke = HubRouter(), Spoke()
    wire = Wire(router, spoke, "a")
    wire.pump()
    assert router.link_lost(wire.conn, normal_close=True) is False
    assert router.connections == {}
    assert router.sessions == {}


def test_heartbeat_silence_cuts_the_spoke_and_keeps_its_session() -> None:
    router, spoke = HubRouter(tick_interval=1), Spoke(heartbeat=1.0)
    wire = Wire(router, spoke, "a")
    wire.pump()
    conn = wire.conn
    for _ in range(2):
        router.tick()
        spoke.forwarder.new_ping()
        wire.pump()
    assert conn.open
    router.tick()  # sees the last ping
    for _ in range(2):  # the spoke froze
        router.tick()
    assert conn.open
    router.tick()  # three silent ticks: 3 x its 1 s heartbeat
    assert conn.close_code == CloseCode.HEARTBEAT_TIMEOUT
    assert router.stats.heartbeat_timeouts == 1
    assert router.link_lost(conn, normal_close=False) is True  # the session waits


def test_plain_clients_get_no_session_and_no_acks() -> None:
    router, spoke = HubRouter(), Spoke(session=False)
    spoke.listen("t:1")
    wire = Wire(router, spoke, "a")
    wire.pump()
    spoke.publish(*range(200))
    wire.pump()
    assert wire.conn.token is None
    assert wire.conn.sent is None
    assert spoke.seen == list(range(200))
    assert spoke.forwarder.token is None
    assert router.link_lost(wire.conn, normal_close=False) is False


def test_liveness_decisions() -> None:
    liveness = Liveness(interval=1.0, timeout=3.0)
    assert liveness.tick(received=1, sent=1) == Liveness.OK
    assert liveness.tick(received=2, sent=1) == Liveness.PING  # nothing sent this tick
    assert liveness.tick(received=2, sent=2) == Liveness.PING  # nothing received
    assert liveness.tick(received=2, sent=3) == Liveness.PING
    assert liveness.tick(received=2, sent=4) == Liveness.DEAD  # 3 silent ticks
