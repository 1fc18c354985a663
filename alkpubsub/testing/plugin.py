"""pytest plugin of the conformance suite: ``pytest_plugins = ["alkpubsub.testing.plugin"]``.

Provides the ``bus`` fixture, built from a ``bus_harness`` fixture that the
test module (or conftest) defines, and closed after each test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .harness import BusHarness


@pytest_asyncio.fixture
async def bus(bus_harness: BusHarness) -> AsyncIterator[BusHarness]:
    try:
        yield bus_harness
    finally:
        await bus_harness.aclose()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "conformance(rule): a test of a SPEC rule")
