"""Issue 9: per-connection bounds of the hub, network-free where the router
alone decides."""

from __future__ import annotations

import json

from alkpubsub.core.router import HubRouter, Peer, SubscribeRequest


def subscribe_frame(topic: str) -> bytes:
    return json.dumps({"type": "__subscribe", "id": "", "payload": {"topic": topic}}).encode()


def test_the_subscription_budget_counts_utf8_bytes() -> None:
    """The budget was checked in UTF-8 bytes but accounted in characters: topics
    of 4-byte characters got four times ``max_subscription_bytes`` in."""
    router = HubRouter(max_subscription_bytes=64 * 1024)
    conn = router.connect(Peer(spoke_id="a", transport="test"))
    accepted = 0
    for i in range(1000):
        topic = f"t{i}:" + "\U0001f600" * 200  # 800 bytes of UTF-8, 200 characters
        request = router.receive(conn, subscribe_frame(topic))
        if isinstance(request, SubscribeRequest):
            router.apply(conn, request)
            accepted += 1
    held = sum(len(topic.encode()) for topic in conn.topics)
    assert held <= 64 * 1024
    assert accepted == len(conn.topics) < 1000
    for topic in list(conn.topics):
        router.unsubscribe(conn, topic)
    assert conn.topic_bytes == 0
