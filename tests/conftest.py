from __future__ import annotations

import pytest

from alkpubsub.testing import BusHarness, MemoryBus, WebSocketBus

pytest_plugins = ["alkpubsub.testing.plugin"]

BUS_FACTORIES: dict[str, type[BusHarness]] = {"memory": MemoryBus, "ws": WebSocketBus}


@pytest.fixture(params=sorted(BUS_FACTORIES))
def bus_harness(request: pytest.FixtureRequest) -> BusHarness:
    return BUS_FACTORIES[request.param]()
