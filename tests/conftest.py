from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from alkpubsub.testing import BusHarness, IrohBus, MemoryBus, MixedBus, WebSocketBus

from .js_support import JsDriver, JsRuntimes

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
            "run them under tools/loopback-only"
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


# -- the JavaScript spoke (tests/js_support.py) -------------------------------------------


@pytest.fixture(scope="session")
def js_runtimes() -> Iterator[JsRuntimes]:
    runtimes = JsRuntimes()
    try:
        yield runtimes
    finally:
        runtimes.stop()


async def _attached(runtimes: JsRuntimes, runtime: str) -> AsyncIterator[JsDriver]:
    driver = runtimes.get(runtime)
    driver.attach(asyncio.get_running_loop())
    try:
        yield driver
    finally:
        try:
            await driver.request("reset")
        finally:
            driver.detach()


@pytest_asyncio.fixture(params=["node", "browser"])
async def js(request: pytest.FixtureRequest, js_runtimes: JsRuntimes) -> AsyncIterator[JsDriver]:
    """JS spokes in Node (with `ws`) and in Chromium, one runtime per parameter."""
    async for driver in _attached(js_runtimes, request.param):
        yield driver


@pytest_asyncio.fixture
async def node_js(js_runtimes: JsRuntimes) -> AsyncIterator[JsDriver]:
    async for driver in _attached(js_runtimes, "node"):
        yield driver


@pytest_asyncio.fixture
async def browser_js(js_runtimes: JsRuntimes) -> AsyncIterator[JsDriver]:
    async for driver in _attached(js_runtimes, "browser"):
        yield driver


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
