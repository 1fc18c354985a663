"""The conformance suite against the installed wheel, not the source tree.

.ci/run copies this directory outside the source tree, installs the wheel into a
venv of its own and runs pytest here inside tools/loopback-only (the Iroh buses bind
endpoints). ALKPUBSUB_SOURCE_ROOT names the source tree that must not be imported.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

import alkpubsub
from alkpubsub.testing import (
    BusHarness,
    CoreConformance,
    HubConformance,
    IrohBus,
    MemoryBus,
    ReconnectConformance,
    WebSocketBus,
)

pytest_plugins = ["alkpubsub.testing.plugin"]

BUSES: dict[str, type[BusHarness]] = {"memory": MemoryBus, "ws": WebSocketBus, "iroh": IrohBus}
HUB_BUSES = ("ws", "iroh")


def test_alkpubsub_is_the_installed_wheel() -> None:
    package = Path(alkpubsub.__file__).resolve()
    assert package.is_relative_to(Path(sys.prefix).resolve()), package
    source_root = Path(os.environ["ALKPUBSUB_SOURCE_ROOT"]).resolve()
    assert not package.is_relative_to(source_root), package


def open_bus(name: str) -> BusHarness:
    if name == "iroh":
        # Iroh endpoints probe the network: never run them outside the namespace.
        visible = [iface for _, iface in socket.if_nameindex() if iface != "lo"]
        assert not visible, f"run under tools/loopback-only: {visible} are visible"
    return BUSES[name]()


@pytest.fixture(params=sorted(BUSES))
def bus_harness(request: pytest.FixtureRequest) -> BusHarness:
    return open_bus(request.param)


class TestCoreConformance(CoreConformance):
    """On the memory, ws and iroh buses."""


class TestHubConformance(HubConformance):
    @pytest.fixture(params=HUB_BUSES)
    def bus_harness(self, request: pytest.FixtureRequest) -> BusHarness:
        return open_bus(request.param)


class TestReconnectConformance(ReconnectConformance):
    @pytest.fixture(params=HUB_BUSES)
    def bus_harness(self, request: pytest.FixtureRequest) -> BusHarness:
        return open_bus(request.param)
