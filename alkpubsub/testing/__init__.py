"""The alkpubsub conformance suite, for our transports and third-party ones.

Use it from a test module::

    pytest_plugins = ["alkpubsub.testing.plugin"]

    from alkpubsub.testing import BusHarness, CoreConformance

    class MyBus(BusHarness):
        async def open(self, n, **options):
            ...  # start n connected targets of one bus; remember them for aclose()

    @pytest.fixture
    def bus_harness():
        return MyBus()

    class TestMyTransport(CoreConformance):
        pass

See ``docs/conformance.md``.
"""

from .broker_suite import BrokerReconnectConformance
from .harness import (
    BusHarness,
    HubAndSpokesBus,
    IrohBus,
    MemoryBus,
    MixedBus,
    StalledSubscriber,
    WebSocketBus,
)
from .harness_picows import PicowsBus, PicowsHubBus, PicowsSpokesBus
from .helpers import DEFAULT_TIMEOUT, Recorder, publish_all, within
from .redis import BridgedBus, BrokerBus, RedisBus, RedisServer
from .suite import CoreConformance, HubConformance, ReconnectConformance
from .suite_payloads import PAYLOAD_TABLE, REFUSED_PAYLOADS, PayloadCase, PayloadConformance
from .suite_subscriptions import ListenerCounting, SubscriptionConformance
from .worker import WorkerBus as WorkerBus  # explicit re-export

__all__ = [
    "BridgedBus",
    "BrokerBus",
    "BrokerReconnectConformance",
    "RedisBus",
    "RedisServer",
    "DEFAULT_TIMEOUT",
    "HubConformance",
    "ReconnectConformance",
    "StalledSubscriber",
    "BusHarness",
    "CoreConformance",
    "HubAndSpokesBus",
    "IrohBus",
    "MemoryBus",
    "MixedBus",
    "WebSocketBus",
    "Recorder",
    "publish_all",
    "within",
    "PAYLOAD_TABLE",
    "REFUSED_PAYLOADS",
    "PayloadCase",
    "PayloadConformance",
    "ListenerCounting",
    "SubscriptionConformance",
    "PicowsBus",
    "PicowsHubBus",
    "PicowsSpokesBus",
]
