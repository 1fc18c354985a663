"""The transport of docs/transports.md (examples/unix_transport.py), written only
against the public extension API, passes the whole conformance suite and is
reachable by URL through an entry point, as a third-party package would be."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import tempfile
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

import alkpubsub.registry as registry
from alkpubsub import transport_from_url
from alkpubsub.core.codec import FrameDecoder, pack_frames
from alkpubsub.testing import (
    BusHarness,
    CoreConformance,
    HubAndSpokesBus,
    HubConformance,
    ReconnectConformance,
    StalledSubscriber,
    SubscriptionConformance,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "unix_transport.py"


def load_example() -> Any:
    spec = importlib.util.spec_from_file_location("unix_transport", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["unix_transport"] = module
    spec.loader.exec_module(module)
    return module


unix_transport = load_example()


class _StalledUnix(StalledSubscriber):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def close_code(self) -> int | None:
        self.writer.transport.resume_reading()
        decoder = FrameDecoder()
        code = None
        while chunk := await self.reader.read(65536):
            for frame in decoder.feed(chunk):
                message = json.loads(frame)
                if message["type"] == "__close":
                    code = message["payload"]["code"]
        return code

    async def aclose(self) -> None:
        self.writer.close()


class UnixBus(HubAndSpokesBus):
    name = "unix"

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory(prefix="alkpubsub-")
        self._count = 0

    def make_hub(self, **options: Any) -> Any:
        self._count += 1
        path = options.pop("path", f"{self._dir.name}/hub{self._count}.sock")
        return unix_transport.UnixHub(path, **options)

    def make_spoke(self, hub: Any, **options: Any) -> Any:
        return transport_from_url(hub.url, **options)

    def restart_options(self, hub: Any) -> dict[str, Any]:
        return {"path": hub.path}

    async def stalled_subscriber(self, hub: Any, topic: str) -> StalledSubscriber:
        reader, writer = await asyncio.open_unix_connection(hub.path, limit=4096)
        subscribe = {"type": "__subscribe", "id": "", "payload": {"topic": topic}}
        ping = {"type": "__ping", "id": "stall", "payload": {}}
        writer.write(pack_frames([json.dumps(subscribe).encode(), json.dumps(ping).encode()]))
        decoder = FrameDecoder()
        while not any(b'"__pong"' in f for f in decoder.feed(await reader.read(65536))):
            pass
        writer.transport.pause_reading()
        return _StalledUnix(reader, writer)

    async def aclose(self) -> None:
        await super().aclose()
        self._dir.cleanup()


@pytest.fixture(autouse=True)
def unix_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """``unix://`` is claimed by the example's class through an entry point,
    without any change to alkpubsub's registry."""
    real = registry.entry_points

    def patched(*, group: str) -> list[EntryPoint]:
        found = list(real(group=group))
        if group == registry.ENTRY_POINT_GROUP:
            found.append(EntryPoint("unix-spoke", "unix_transport:UnixSpoke", group))
        return found

    monkeypatch.setattr(registry, "entry_points", patched)


@pytest.fixture
def bus_harness() -> BusHarness:
    return UnixBus()


class TestUnixCore(CoreConformance):
    pass


class TestUnixHub(HubConformance):
    pass


class TestUnixReconnect(ReconnectConformance):
    pass


class TestUnixSubscriptions(SubscriptionConformance):
    pass


def test_unix_scheme_comes_from_the_transport_class() -> None:
    spoke = transport_from_url("unix:///tmp/nowhere.sock", wait_connected=False)
    assert isinstance(spoke, unix_transport.UnixSpoke)
    assert spoke.path == "/tmp/nowhere.sock"


def test_example_uses_only_the_public_api() -> None:
    imports = [
        line for line in EXAMPLE.read_text().splitlines() if line.startswith(("from ", "import "))
    ]
    alk_imports = [line for line in imports if "alkpubsub" in line]
    assert alk_imports == ["from alkpubsub.transports.base import ("]
    assert len(EXAMPLE.read_text().splitlines()) <= 130


async def test_a_refusal_is_announced_on_a_link_without_close_codes(tmp_path: Path) -> None:
    """authenticate refuses in serve_link: the __close frame carries 4403 over a
    byte stream, and the spoke treats it as final."""
    from alkpubsub import ConnectionRefusedByHubError
    from alkpubsub.testing import within

    hub = unix_transport.UnixHub(str(tmp_path / "hub.sock"), authenticate=lambda request: False)
    async with hub:
        spoke = unix_transport.UnixSpoke(hub.path, connect_timeout=5)
        with pytest.raises(ConnectionRefusedByHubError, match="4403"):
            await within(spoke.start())
        assert spoke.connect_attempts == 1


def test_heartbeat_ticks_are_not_rounded_up_by_float_error() -> None:
    from alkpubsub.core import control
    from alkpubsub.core.codec import encode_envelope
    from alkpubsub.core.router import HubRouter, Peer

    router = HubRouter(tick_interval=0.1)
    conn = router.connect(Peer(spoke_id="a", transport="test"))
    router.receive(conn, encode_envelope(control.hello(heartbeat=0.4)))
    assert conn.heartbeat_ticks == 12
