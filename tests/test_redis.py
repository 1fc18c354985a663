"""The Redis transport on a real redis-server (started by the tests)."""

from __future__ import annotations

import pytest

from alkpubsub.testing import BrokerReconnectConformance, BusHarness, CoreConformance, RedisBus


@pytest.fixture
def bus_harness(redis_server_binary: str) -> BusHarness:
    return RedisBus()


class TestRedisCoreConformance(CoreConformance):
    pass


class TestRedisReconnectConformance(BrokerReconnectConformance):
    pass
