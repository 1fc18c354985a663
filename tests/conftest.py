from __future__ import annotations

import os
import socket

import pytest

from alkpubsub.testing import BusHarness, IrohBus, MemoryBus, MixedBus, WebSocketBus

pytest_plugins = ["alkpubsub.testing.plugin"]

BUS_FACTORIES: dict[str, type[BusHarness]] = {
    "memory": MemoryBus,
    "ws": WebSocketBus,
    "iroh": IrohBus,
    "mixed": MixedBus,
}
HUB_BUSES = ("ws", "iroh", "mixed")
NEEDS_LOOPBACK_ONLY = {"iroh", "mixed"}


def visible_non_loopback_interfaces() -> list[str]:
    return [name for _, name in socket.if_nameindex() if name != "lo"]


@pytest.fixture
def loopback_only() -> None:
    """Iroh endpoints probe for port mappings (UPnP, NAT-PMP, PCP) whatever their
    configuration; they may only run where loopback is the only interface."""
    visible = visible_non_loopback_interfaces()
    if visible:
        message = (
            f"iroh tests need a loopback-only network namespace, but {visible} are visible: "
            "run them under ../shared/tools/loopback-only"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def harness_for(request: pytest.FixtureRequest, name: str) -> BusHarness:
    if name in NEEDS_LOOPBACK_ONLY:
        request.getfixturevalue("loopback_only")
    return BUS_FACTORIES[name]()


@pytest.fixture(params=sorted(BUS_FACTORIES))
def bus_harness(request: pytest.FixtureRequest) -> BusHarness:
    return harness_for(request, request.param)


@pytest.fixture(params=HUB_BUSES)
def hub_bus_harness(request: pytest.FixtureRequest) -> BusHarness:
    return harness_for(request, request.param)


@pytest.fixture
def redis_server_binary() -> str:
    """A real redis-server for the Redis tests: under CI a missing binary fails
    the run (``.ci/run`` installs it), elsewhere the tests skip."""
    from alkpubsub.testing.redis import RedisServerMissing, find_redis_server

    try:
        return find_redis_server()
    except RedisServerMissing as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))
