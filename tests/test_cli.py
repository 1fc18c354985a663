"""The ``alkpubsub`` console script, run as a real process on loopback."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator

import pytest

from alkpubsub.testing import within

TIMEOUT = 15.0


async def run(*args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "alkpubsub",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await within(process.communicate(stdin), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.fixture
async def hub_url() -> AsyncIterator[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alkpubsub", "hub", "--port", "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    line = await within(process.stdout.readline(), TIMEOUT)
    try:
        yield line.decode().strip()
    finally:
        alive = process.returncode is None
        if alive:
            process.terminate()
        code = await within(process.wait(), TIMEOUT)
        errors = (await within(process.stderr.read(), TIMEOUT)).decode()
        assert alive, f"the hub exited early with {code}: {errors}"
        assert code == 0, errors


async def test_hub_sub_pub_round_trip(hub_url: str) -> None:
    assert hub_url.startswith("ws://127.0.0.1:")
    subscriber = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alkpubsub", "sub", hub_url, "job.status:42", "other:1",
        "--count", "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert subscriber.stderr is not None
    ready = await within(subscriber.stderr.readline(), TIMEOUT)
    assert ready.decode().startswith("subscribed to job.status:42, other:1")

    code, _, err = await run("pub", hub_url, "job.status", "42", '{"state": "running"}')
    assert (code, err) == (0, "")
    lines = (
        b'{"type": "job.status", "id": "42", "payload": {"state": "done"}}\n'
        b"\n"
        b'{"type": "other", "id": "1"}\n'
    )
    code, _, err = await run("pub", hub_url, "-", stdin=lines)
    assert (code, err) == (0, "")

    out, _ = await within(subscriber.communicate(), TIMEOUT)
    assert subscriber.returncode == 0
    received = [json.loads(line) for line in out.decode().splitlines()]
    assert received == [
        {"type": "job.status", "id": "42", "payload": {"state": "running"}},
        {"type": "job.status", "id": "42", "payload": {"state": "done"}},
        {"type": "other", "id": "1", "payload": None},
    ]


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["TYPE", "1", "{not json"], None, "PAYLOAD_JSON is not valid JSON"),
        (["__reserved", "1"], None, "reserved"),
        (["bad type", "1"], None, "invalid event type"),
        (["TYPE"], None, "needs TYPE and ID"),
        (["-"], b'{"type": "t"}\n', "stdin line 1 is not an envelope"),
    ],
)
async def test_pub_rejects_bad_input_in_one_line(
    hub_url: str, args: list[str], stdin: bytes | None, message: str
) -> None:
    code, out, err = await run("pub", hub_url, *args, stdin=stdin)
    assert code == 2
    assert out == ""
    assert message in err
    assert err.count("\n") == 1


async def test_unreachable_hub_is_one_clear_line() -> None:
    code, _, err = await run("pub", "ws://127.0.0.1:9/", "t", "1", "--timeout", "0.5")
    assert code == 1
    assert err.startswith("alkpubsub pub: error: cannot reach hub at ws://127.0.0.1:9/")
    assert err.count("\n") == 1


async def test_bad_url_and_topic_are_usage_errors() -> None:
    code, _, err = await run("sub", "http://127.0.0.1:9/", "t:1")
    assert code == 2
    assert "bad hub URL" in err
    code, _, err = await run("sub", "ws://127.0.0.1:9/", "no-colon")
    assert code == 2
    assert "invalid topic" in err


async def test_help_explains_each_command() -> None:
    code, out, _ = await run("--help")
    assert code == 0
    for command in ("hub", "sub", "pub"):
        assert command in out
        code, sub_help, _ = await run(command, "--help")
        assert code == 0
        assert "usage: alkpubsub " + command in sub_help


async def test_hub_with_iroh_serves_one_bus_on_both_transports(loopback_only: None) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alkpubsub", "hub", "--port", "0", "--iroh",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        ws_url = (await within(process.stdout.readline(), TIMEOUT)).decode().strip()
        iroh_url = (await within(process.stdout.readline(), TIMEOUT)).decode().strip()
        assert ws_url.startswith("ws://")
        assert iroh_url.startswith("iroh://endpoint")
        # Subscribe over Iroh, publish over WebSocket: one bus.
        subscriber = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "alkpubsub", "sub", iroh_url, "mixed:1", "--count", "1",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert subscriber.stderr is not None
        ready = await within(subscriber.stderr.readline(), TIMEOUT)
        assert ready.startswith(b"subscribed")
        code, _, err = await run("pub", ws_url, "mixed", "1", '"over ws"')
        assert (code, err) == (0, "")
        out, _ = await within(subscriber.communicate(), TIMEOUT)
        assert json.loads(out) == {"type": "mixed", "id": "1", "payload": "over ws"}
        code, _, err = await run("pub", iroh_url, "mixed", "2")
        assert (code, err) == (0, "")
    finally:
        process.terminate()
        assert await within(process.wait(), TIMEOUT) == 0
