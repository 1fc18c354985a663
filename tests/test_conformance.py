"""Every transport's bus runs the same conformance suite (buses: see conftest)."""

from __future__ import annotations

import pytest

from alkpubsub.testing import (
    BusHarness,
    CoreConformance,
    HubConformance,
    PayloadConformance,
    ReconnectConformance,
    SubscriptionConformance,
)


class TestCoreConformance(CoreConformance):
    """On memory, ws, iroh and the mixed bus."""


class TestHubConformance(HubConformance):
    @pytest.fixture
    def bus_harness(self, hub_bus_harness: BusHarness) -> BusHarness:
        return hub_bus_harness


class TestReconnectConformance(ReconnectConformance):
    @pytest.fixture
    def bus_harness(self, hub_bus_harness: BusHarness) -> BusHarness:
        return hub_bus_harness


class TestPayloadConformance(PayloadConformance):
    """The payload table on memory, ws, iroh and the mixed bus."""


class TestSubscriptionConformance(SubscriptionConformance):
    """Subscriptions and operators on memory, ws, iroh and the mixed bus."""
