"""Hubs bridged through Redis form one bus (SPEC H6): the conformance suite
on bridged buses, then the bridge's own rules."""

from __future__ import annotations

import pytest

from alkpubsub.testing import BridgedBus, BusHarness, CoreConformance, HubConformance

pytestmark = pytest.mark.usefixtures("redis_server_binary")


class TestBridgedCoreConformance(CoreConformance):
    """Three WebSocket hubs; the first spoke is on another hub than targets[0],
    so every test crosses the bridge."""

    @pytest.fixture
    def bus_harness(self, redis_server_binary: str) -> BusHarness:
        return BridgedBus(("ws", "ws", "ws"), first_spoke_hub=1)


class TestBridgedHubConformance(HubConformance):
    @pytest.fixture
    def bus_harness(self, redis_server_binary: str) -> BusHarness:
        return BridgedBus(("ws", "ws", "ws"), first_spoke_hub=0)
