"""Issue 4: the same program over WebSocket and over Iroh, chosen by
configuration only (URL, config mapping, environment)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alkpubsub import (
    create_pubsub,
    transport_from_config,
    transport_from_env,
    transport_from_url,
)
from alkpubsub.testing import within
from alkpubsub.transports.iroh import IrohHub, IrohSpoke
from alkpubsub.transports.ws import WebSocketHub, WebSocketSpoke

pytestmark = pytest.mark.usefixtures("loopback_only")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "job_feed.py"
TIMEOUT = 30.0


@pytest.fixture(params=["ws", "iroh"])
async def hub_url(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    hub = WebSocketHub(port=0) if request.param == "ws" else IrohHub()
    async with hub:
        yield hub.url


async def run_example(role: str, url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), role,
        env={**os.environ, "ALKPUBSUB_URL": url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def test_example_runs_unchanged_over_ws_and_iroh(hub_url: str) -> None:
    dashboard = await run_example("dashboard", hub_url)
    assert dashboard.stderr is not None
    assert await within(dashboard.stderr.readline(), TIMEOUT) == b"ready\n"
    worker = await run_example("worker", hub_url)
    _, worker_err = await within(worker.communicate(), TIMEOUT)
    assert worker.returncode == 0, worker_err.decode()
    out, err = await within(dashboard.communicate(), TIMEOUT)
    assert dashboard.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert len(lines) == 9
    for job in ("build", "test", "deploy"):
        states = [line.split()[1] for line in lines if line.startswith(job)]
        assert states == ["queued", "running", "done"]


async def test_example_default_is_the_in_process_bus() -> None:
    env = {k: v for k, v in os.environ.items() if k != "ALKPUBSUB_URL"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(EXAMPLE), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await within(process.communicate(), TIMEOUT)
    assert process.returncode == 0, err.decode()
    assert len(out.decode().splitlines()) == 9


async def test_url_config_and_environment_select_the_transport() -> None:
    async with WebSocketHub(port=0) as ws_hub, IrohHub() as iroh_hub:
        choices = [
            transport_from_url(ws_hub.url),
            transport_from_url(iroh_hub.url),
            transport_from_config({"transport": "ws-spoke", "url": ws_hub.url}),
            transport_from_config({"transport": "iroh-spoke", "hub": iroh_hub.ticket}),
            transport_from_config({"url": iroh_hub.url}),
            transport_from_env(environ={"ALKPUBSUB_URL": ws_hub.url}),
            transport_from_env(environ={"ALKPUBSUB_URL": iroh_hub.url}),
        ]
        kinds = [type(target) for target in choices]
        assert kinds == [
            WebSocketSpoke, IrohSpoke, WebSocketSpoke, IrohSpoke, IrohSpoke,
            WebSocketSpoke, IrohSpoke,
        ]  # fmt: skip
        for target in choices:
            async with create_pubsub(target) as pubsub:
                updates = pubsub.subscribe("swap", "1")
                await within(pubsub.flush())
                pubsub.publish("swap", "1", type(target).__name__)
                envelope = await within(anext(updates))
                assert envelope.payload == type(target).__name__
