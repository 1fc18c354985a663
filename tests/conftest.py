from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio

from alkpubsub.testing import (
    BusHarness,
    IrohBus,
    MemoryBus,
    MixedBus,
    PicowsBus,
    PicowsHubBus,
    PicowsSpokesBus,
    WebSocketBus,
)
from alkpubsub.transports.ws_backends import ENV_WS_BACKEND, picows_installed

from .js_support import JsDriver, JsRuntimes

pytest_plugins = ["alkpubsub.testing.plugin"]

BUS_FACTORIES: dict[str, type[BusHarness]] = {
    "memory": MemoryBus,
    "ws": WebSocketBus,
    "iroh": IrohBus,
    "mixed": MixedBus,
    "ws-picows": PicowsBus,
    "ws-picows-hub": PicowsHubBus,
    "ws-picows-spokes": PicowsSpokesBus,
}
HUB_BUSES = ("ws", "iroh", "mixed", "ws-picows", "ws-picows-hub", "ws-picows-spokes")
NEEDS_LOOPBACK_ONLY = {"iroh", "mixed"}
NEEDS_PICOWS = {"ws-picows", "ws-picows-hub", "ws-picows-spokes"}

# Tests that do not ask for a WebSocket backend run on websockets, the default
# dependency, whether or not picows is installed (backend="auto" would pick it);
# the picows buses and tests/test_picows.py ask for picows explicitly
# (ALKPUBSUB_WS_BACKEND=picows pytest runs everything else on picows too).
os.environ.setdefault(ENV_WS_BACKEND, "websockets")


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


@pytest.fixture
def picows_backend() -> None:
    """The picows backend is an extra (``alkpubsub[fast]``); under CI it must be there."""
    if not picows_installed():
        message = "picows is not installed: pip install -e '.[fast]'"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


#: Modules whose every test runs twice: on websockets and on picows (the
#: WebSocket backends); tests/test_picows.py has picows's own tests.
ON_BOTH_WS_BACKENDS = {
    "tests.test_ws",
    "tests.test_ws_integrations",
    "tests.test_metrics",
    "tests.test_deployment",
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if metafunc.module.__name__ in ON_BOTH_WS_BACKENDS:
        metafunc.parametrize("ws_backend", ["websockets", "picows"], indirect=True)


@pytest.fixture(autouse=True)  # autouse: set up before the hubs it configures
def ws_backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """In ON_BOTH_WS_BACKENDS, hubs and spokes created with the default
    ``backend="auto"`` run on the backend of the test's parameter."""
    backend: str | None = getattr(request, "param", None)
    if backend is None:
        return None
    if backend == "picows":
        request.getfixturevalue("picows_backend")
    monkeypatch.setenv(ENV_WS_BACKEND, backend)
    return backend


def harness_for(request: pytest.FixtureRequest, name: str) -> BusHarness:
    if name in NEEDS_LOOPBACK_ONLY:
        request.getfixturevalue("loopback_only")
    if name in NEEDS_PICOWS:
        request.getfixturevalue("picows_backend")
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
