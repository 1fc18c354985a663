from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from .support import Children


@pytest_asyncio.fixture
async def children() -> AsyncIterator[Children]:
    """Driver processes of a test: killed and reaped when it ends, whatever happened."""
    registry = Children()
    try:
        yield registry
    finally:
        await registry.aclose()


@pytest.fixture(params=["ws", "iroh"])
def transport(request: pytest.FixtureRequest) -> str:
    """Both hub transports; Iroh needs the loopback-only namespace."""
    if request.param == "iroh":
        request.getfixturevalue("loopback_only")
    return str(request.param)
