"""The router's pull API for a hub's bridge (SPEC H6), without any network."""

from __future__ import annotations

import json
from typing import Any

from alkpubsub.core.codec import decode_envelope, encode_envelope
from alkpubsub.core.envelope import Event, make_event
from alkpubsub.core.router import HubConnection, HubRouter, Peer


def frame(type_: str, topic: str = "", id_: str = "") -> bytes:
    payload: dict[str, Any] = {"topic": topic} if topic else {}
    return json.dumps({"type": type_, "id": id_, "payload": payload}).encode()


def bridged_router() -> HubRouter:
    router = HubRouter()
    router.bridged = True
    return router


def connect(router: HubRouter, name: str) -> HubConnection:
    """A connection that greeted the hub, its welcome already taken."""
    conn = router.connect(Peer(spoke_id=name, transport="test"))
    router.receive(conn, frame("__hello"))
    router.take_outgoing(conn)
    return conn


def subscribe(router: HubRouter, conn: HubConnection, topic: str) -> None:
    request = router.receive(conn, frame("__subscribe", topic))
    assert request is not None
    router.apply(conn, request)


def listener(event: Event) -> None:
    return None


def test_interest_is_the_union_of_connections_and_local_listeners() -> None:
    router = bridged_router()
    alice, bob = connect(router, "alice"), connect(router, "bob")
    subscribe(router, alice, "t:1")
    assert router.bridge_work
    assert router.take_interest_changes() == {"t:1": True}
    subscribe(router, bob, "t:1")
    router.add_listener("t:1", listener)
    assert router.take_interest_changes() == {}  # still one interest
    router.receive(alice, frame("__unsubscribe", "t:1"))
    router.disconnect(bob)
    assert router.take_interest_changes() == {}  # the hub's own listener remains
    router.remove_listener("t:1", listener)
    assert router.take_interest_changes() == {"t:1": False}


def test_a_disconnect_drops_interest_and_changes_keep_the_latest_state() -> None:
    router = bridged_router()
    alice = connect(router, "alice")
    subscribe(router, alice, "a:1")
    subscribe(router, alice, "b:1")
    router.take_interest_changes()
    router.add_listener("b:1", listener)
    router.disconnect(alice)
    assert router.take_interest_changes() == {"a:1": False}
    router.add_listener("c:1", listener)
    router.remove_listener("c:1", listener)
    router.add_listener("c:1", listener)
    assert router.take_interest_changes() == {"c:1": True}


def test_what_enters_the_hub_goes_out_once_and_bridged_events_do_not() -> None:
    router = bridged_router()
    alice = connect(router, "alice")
    request = router.receive(alice, encode_envelope(make_event("e", "1", "from alice").detail))
    assert request is not None
    router.apply(alice, request)
    router.dispatch(make_event("e", "1", "from the hub"))
    router.publish(make_event("e", "1", "from another hub").detail)  # what a bridge delivers
    # Encoded once, as every connection got them (H3): the bridge forwards the bytes.
    assert [decode_envelope(f).payload for f in router.take_outbound()] == [
        "from alice",
        "from the hub",
    ]
    assert router.take_outbound() == []


def test_pings_are_held_for_the_bridge() -> None:
    router = bridged_router()
    alice = connect(router, "alice")
    router.take_outgoing(alice)  # the welcome
    router.receive(alice, frame("__ping", id_="7"))
    assert router.take_outgoing(alice) == []
    assert router.take_held_pongs() == [(alice, "7")]
    router.send_pong(alice, "7")
    [pong] = router.take_outgoing(alice)
    assert json.loads(pong)["type"] == "__pong"
    assert json.loads(pong)["id"] == "7"


def test_an_unbridged_router_tracks_nothing() -> None:
    router = HubRouter()
    alice = connect(router, "alice")
    subscribe(router, alice, "t:1")
    router.add_listener("u:1", listener)
    router.dispatch(make_event("t", "1"))
    router.receive(alice, frame("__ping", id_="1"))
    assert not router.bridge_work
    assert router.take_interest_changes() == {}
    assert router.take_outbound() == []
    assert router.take_held_pongs() == []
