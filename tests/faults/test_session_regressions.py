"""Session bugs the fault suite found, each reproduced without a network
(router and forwarders wired as in tests/test_core_session.py)."""

from __future__ import annotations

from alkpubsub.core.close import CloseCode
from alkpubsub.core.router import HubRouter

from ..test_core_session import Spoke, Wire


def test_frames_taken_after_a_heartbeat_cut_are_kept_for_the_resume() -> None:
    """A hub cut a silent subscriber (4408) while its writer task was still
    running: the writer took the queued data along with the ``__close``, not
    recorded as unconfirmed, so the resumed session never resent them
    (seen as 7 events lost at 2,000/s under Iroh blackholes)."""
    router = HubRouter(tick_interval=1)
    subscriber, publisher = Spoke(heartbeat=1.0), Spoke()
    subscriber.listen("t:1")
    sub_wire, pub_wire = Wire(router, subscriber, "s"), Wire(router, publisher, "p")
    sub_wire.pump()
    pub_wire.pump()
    publisher.publish(*range(5))
    pub_wire.pump()
    sub_wire.pump()
    conn = sub_wire.conn
    publisher.publish(*range(5, 10))
    pub_wire.pump()  # queued for the subscriber, not written yet
    for _ in range(4):  # the subscriber went silent (a blackhole)
        router.tick()
    assert conn.close_code == CloseCode.HEARTBEAT_TIMEOUT
    # The connection's writer runs once more before the link is closed.
    written = router.take_outgoing(conn)
    assert all(b'"__close"' in frame for frame in written)  # never data after the cut
    sub_wire.cut()
    Wire(router, subscriber, "s2").pump()
    assert subscriber.welcomes[-1].resumed
    assert subscriber.seen == list(range(10))


def test_events_published_while_a_cut_link_closes_are_kept_for_the_resume() -> None:
    """Between a 4408/1013 cut and the end of its link (up to the hub's
    ``close_timeout``) the fan-out skipped the connection: a session that
    survives the cut lost what was published meanwhile, without a gap."""
    router = HubRouter(tick_interval=1)
    subscriber, publisher = Spoke(heartbeat=1.0), Spoke()
    subscriber.listen("t:1")
    sub_wire, pub_wire = Wire(router, subscriber, "s"), Wire(router, publisher, "p")
    sub_wire.pump()
    pub_wire.pump()
    conn = sub_wire.conn
    for _ in range(4):
        router.tick()
    assert conn.close_code == CloseCode.HEARTBEAT_TIMEOUT
    publisher.publish(*range(5))  # while the hub closes the silent link
    pub_wire.pump()
    router.take_announcement(conn)
    sub_wire.cut()
    Wire(router, subscriber, "s2").pump()
    assert subscriber.welcomes[-1].resumed
    assert not subscriber.welcomes[-1].gap
    assert subscriber.seen == list(range(5))


def test_a_resume_whose_welcome_was_lost_can_be_resumed_again() -> None:
    """The hub rotates the token when it resumes a session; when the link died
    before the welcome with the new token arrived, the spoke still held the
    old one and its next resume started a new session: a gap, and what the
    spoke had sent reported as possibly lost (seen under TCP resets)."""
    router = HubRouter()
    publisher, subscriber = Spoke(), Spoke()
    subscriber.listen("t:1")
    pub_wire, sub_wire = Wire(router, publisher, "p"), Wire(router, subscriber, "s")
    pub_wire.pump()
    sub_wire.pump()
    publisher.publish(*range(3))
    pub_wire.pump(to_hub=1)  # hello/subscribes are gone: one data frame only
    first_token = publisher.forwarder.token
    pub_wire.cut()
    # Resumed on the hub, but the link dies before the welcome reaches the spoke.
    lost = Wire(router, publisher, "p1")
    lost.pump(to_spoke=0)
    assert router.stats.sessions_resumed == 1
    lost.cut()
    assert publisher.forwarder.token == first_token
    again = Wire(router, publisher, "p2")
    again.pump()
    sub_wire.pump()
    welcome = publisher.welcomes[-1]
    assert welcome.resumed
    assert not welcome.gap
    assert welcome.undelivered == []
    assert publisher.forwarder.spoke_id == "p"
    assert subscriber.seen == [0, 1, 2]
    # Once the spoke used its new token, the old one is worthless.
    assert first_token not in router.sessions
    assert len(router.sessions) == 2  # one token per session


def test_a_gap_is_reported_again_when_its_welcome_was_lost() -> None:
    router = HubRouter(max_buffered_bytes=2000)
    subscriber, publisher = Spoke(), Spoke(max_outgoing_bytes=100_000)
    subscriber.listen("t:1")
    sub_wire, pub_wire = Wire(router, subscriber, "s"), Wire(router, publisher, "p")
    sub_wire.pump()
    pub_wire.pump()
    sub_wire.cut()
    publisher.publish(*range(200))  # overflows the detached session: a gap
    pub_wire.pump()
    lost = Wire(router, subscriber, "s1")
    lost.pump(to_spoke=0)
    lost.cut()
    Wire(router, subscriber, "s2").pump()
    assert subscriber.welcomes[-1].resumed
    assert subscriber.welcomes[-1].gap
