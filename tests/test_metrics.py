"""Opt-in /healthz and /metrics of the standalone WebSocket hub, read by a real
HTTP client (aiohttp) and parsed by the reference Prometheus parser."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from alkpubsub import make_event
from alkpubsub.core.router import Peer
from alkpubsub.metrics import METRICS_CONTENT_TYPE, health, render_metrics
from alkpubsub.testing import BridgedBus, Recorder, within
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke


def http_base(hub: WebSocketHub) -> str:
    return hub.url.replace("ws://", "http://", 1).rstrip("/")


async def get(url: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        body = await within(response.text())
        return response.status, response.headers.get("Content-Type", ""), body


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
async def hub() -> AsyncIterator[WebSocketHub]:
    def no_secrets(peer: Peer, action: str, topic: str) -> bool:
        return not topic.startswith("secret:")

    async with WebSocketHub(
        port=0, health_path="/healthz", metrics_path="/metrics", authorize=no_secrets
    ) as hub:
        yield hub


async def test_endpoints_are_off_by_default() -> None:
    async with WebSocketHub(port=0) as hub:
        for path in ("/healthz", "/metrics"):
            status, _, _ = await within(get(http_base(hub) + path))
            assert status == 404


async def test_healthz_answers_ok_while_serving(hub: WebSocketHub) -> None:
    status, content_type, body = await within(get(http_base(hub) + "/healthz?probe=lb"))
    assert (status, body) == (200, "ok\n")
    assert content_type.startswith("text/plain")
    await hub.aclose()
    assert health(hub) == (503, "closing\n")


async def test_metrics_count_what_happened(hub: WebSocketHub) -> None:
    recorder = Recorder()
    async with WebSocketSpoke(hub.url) as spoke:
        spoke.add_event_listener("job.status:1", recorder)
        spoke.add_event_listener("job.status:2", recorder)
        spoke.add_event_listener("secret:1", recorder)  # refused by authorize
        await within(spoke.flush())
        spoke.dispatch_event(make_event("job.status", "1", "done"))
        await recorder.wait_for_count(1)
        async with connect(hub.url) as raw:  # one bad frame (B10)
            await raw.send("not json")
            await raw.send(json.dumps({"type": "__ping", "id": "p", "payload": {}}))
            while json.loads(await within(raw.recv()))["type"] != "__pong":
                pass
            status, content_type, text = await within(get(http_base(hub) + "/metrics"))
    assert status == 200
    assert content_type == METRICS_CONTENT_TYPE
    values = samples(text)
    assert values[("alkpubsub_hub_up", ())] == 1
    assert values[("alkpubsub_hub_connections", (("transport", "ws"),))] == 2
    assert values[("alkpubsub_hub_connections_accepted_total", ())] == 2
    assert values[("alkpubsub_hub_topics", ())] == 2
    assert values[("alkpubsub_hub_subscriptions", ())] == 2
    assert values[("alkpubsub_hub_relayed_events_total", ())] == 1
    assert values[("alkpubsub_hub_invalid_frames_total", ())] == 1
    assert values[("alkpubsub_hub_refused_requests_total", ())] == 1
    assert values[("alkpubsub_hub_backpressure_disconnects_total", ())] == 0
    assert values[("alkpubsub_hub_info", (("version", "0.1.0"),))] == 1


async def test_websocket_upgrades_still_work_beside_the_endpoints(hub: WebSocketHub) -> None:
    recorder = Recorder()
    hub.add_event_listener("ping:1", recorder)
    async with WebSocketSpoke(hub.url) as spoke:
        spoke.dispatch_event(make_event("ping", "1"))
        await recorder.wait_for_count(1)
    status, _, _ = await within(get(http_base(hub) + "/elsewhere"))
    assert status == 404


def test_metrics_of_an_idle_hub_parse() -> None:
    text = render_metrics(WebSocketHub(port=0))
    values = samples(text)
    assert values[("alkpubsub_hub_connections", ())] == 0
    assert all(line.startswith(("# HELP", "# TYPE", "alkpubsub_")) for line in text.splitlines())
    assert "bridge" not in text  # only bridged hubs have bridge metrics


@pytest.mark.usefixtures("redis_server_binary")
async def test_a_bridged_hub_exports_its_bridge_state() -> None:
    bus = BridgedBus(("ws", "ws"))
    try:
        await bus.open(1)
        hub_a, hub_b = bus.bus_hubs
        spoke_b = await bus.add_spoke(hub_b)
        remote = Recorder("remote")
        spoke_b.add_event_listener("m:t", remote)
        await within(spoke_b.flush())
        hub_a.dispatch_event(make_event("m", "t", "over redis"))
        await remote.wait_for_payload("over redis")
        sent, heard = samples(render_metrics(hub_a)), samples(render_metrics(hub_b))
    finally:
        await bus.aclose()
    assert sent[("alkpubsub_hub_bridge_connected", ())] == 1
    assert sent[("alkpubsub_hub_bridge_published_total", ())] >= 1
    assert sent[("alkpubsub_hub_bridge_dropped_total", ())] == 0
    assert heard[("alkpubsub_hub_bridge_received_total", ())] >= 1
    assert heard[("alkpubsub_hub_bridge_topics", ())] == 1
