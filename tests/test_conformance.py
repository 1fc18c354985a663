"""Every transport's bus runs the same conformance suite."""

from __future__ import annotations

import pytest

from alkpubsub.testing import (
    BusHarness,
    CoreConformance,
    HubConformance,
    ReconnectConformance,
    WebSocketBus,
)

HUB_BUSES: dict[str, type[BusHarness]] = {"ws": WebSocketBus}


class TestCoreConformance(CoreConformance):
    """On every bus of conftest's ``bus_harness`` (memory, ws, ...)."""


@pytest.fixture(params=sorted(HUB_BUSES))
def hub_bus_harness(request: pytest.FixtureRequest) -> BusHarness:
    return HUB_BUSES[request.param]()


class TestHubConformance(HubConformance):
    @pytest.fixture
    def bus_harness(self, hub_bus_harness: BusHarness) -> BusHarness:
        return hub_bus_harness


class TestReconnectConformance(ReconnectConformance):
    @pytest.fixture
    def bus_harness(self, hub_bus_harness: BusHarness) -> BusHarness:
        return hub_bus_harness
