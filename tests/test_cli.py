"""The ``alkpubsub`` console script, run as a real process on loopback.

Hubs the CLI talks to are either the CLI's own (``alkpubsub hub``) or a hub in
this test process when a test needs ``authorize``/``authenticate`` or TLS
settings. Every wait is bounded; conditions are read from the processes'
output lines, never slept on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import ssl
import sys
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme

from alkpubsub import make_event
from alkpubsub.core.router import Peer
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.ws import HttpRequestInfo, WebSocketHub

TIMEOUT = 15.0
#: Clients are given a much longer --timeout than tests wait: a client that waits
#: for its timeout instead of failing fast makes the test fail.
PATIENT = "60"

Process = asyncio.subprocess.Process


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "alkpubsub", *args]


async def run(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *cli(*args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await within(process.communicate(stdin), TIMEOUT)
    finally:
        if process.returncode is None:  # timed out: leave no process behind
            process.kill()
            await within(process.wait(), TIMEOUT)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def spawn(
    *args: str, stdin: int = asyncio.subprocess.DEVNULL, env: dict[str, str] | None = None
) -> AsyncIterator[Process]:
    process = await asyncio.create_subprocess_exec(
        *cli(*args),
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
        await within(process.wait(), TIMEOUT)


async def read_until(
    stream: asyncio.StreamReader | None, wanted: Callable[[str], bool], timeout: float = TIMEOUT
) -> list[str]:
    """Lines of ``stream`` up to the first one that is ``wanted``."""
    assert stream is not None
    lines: list[str] = []

    async def reading() -> list[str]:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"output ended without the expected line: {lines}")
            lines.append(raw.decode().rstrip("\n"))
            if wanted(lines[-1]):
                return lines

    try:
        return await within(reading(), timeout)
    except TimeoutError:
        raise AssertionError(f"no expected line within {timeout}s: {lines}") from None


async def subscribed(process: Process) -> None:
    await read_until(process.stderr, lambda line: "subscribed to" in line)


def one_line_error(err: str, command: str, fragment: str) -> None:
    assert err.startswith(f"alkpubsub {command}: error: "), err
    assert fragment in err, err
    assert err.count("\n") == 1, err
    assert "Traceback" not in err


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def hub_url() -> AsyncIterator[str]:
    async with spawn("hub", "--port", "0") as process:
        line = await within(process.stdout.readline(), TIMEOUT)  # type: ignore[union-attr]
        yield line.decode().strip()
        assert process.returncode is None, "the hub exited early"
        process.terminate()
        assert await within(process.wait(), TIMEOUT) == 0


class GuardedHub(WebSocketHub):
    """A hub that refuses topics starting with 'secret:', and upgrades on path
    /private without 'Authorization: Bearer letmein'. ``seen[topic]`` is set
    when a subscribe or publish of ``topic`` was decided (and so applied)."""

    def __init__(self) -> None:
        super().__init__(port=0, path="*", authorize=self.decide, authenticate=self.check)
        self.seen: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    @property
    def url(self) -> str:
        return super().url.removesuffix("*") + "/"  # it serves every path

    def decide(self, peer: Peer, action: str, topic: str) -> bool:
        self.seen[topic].set()  # sync: the hub applies the verdict before anyone else runs
        return not topic.startswith("secret:")

    def check(self, request: HttpRequestInfo) -> bool | int:
        if request.path != "/private":
            return True
        return True if request.headers.get("authorization") == "Bearer letmein" else 401


@pytest.fixture
async def guarded_hub() -> AsyncIterator[GuardedHub]:
    async with GuardedHub() as hub:
        yield hub


# -- the basics ------------------------------------------------------------------------------


async def test_hub_sub_pub_round_trip(hub_url: str) -> None:
    assert hub_url.startswith("ws://127.0.0.1:")
    async with spawn("sub", hub_url, "job.status:42", "other:1", "--count", "3") as subscriber:
        lines = await read_until(subscriber.stderr, lambda line: "subscribed" in line)
        assert lines == ["alkpubsub sub: subscribed to job.status:42, other:1"]

        code, _, err = await run("pub", hub_url, "job.status", "42", '{"state": "running"}')
        assert (code, err) == (0, "")
        lines_in = (
            b'{"type": "job.status", "id": "42", "payload": {"state": "done"}}\n'
            b"\n"
            b'{"type": "other", "id": "1"}\n'
        )
        code, _, err = await run("pub", hub_url, "-", stdin=lines_in)
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
    one_line_error(err, "pub", message)


async def test_unreachable_hub_is_one_clear_line_at_once() -> None:
    port = free_port()  # nothing listens there
    code, _, err = await run("pub", f"ws://127.0.0.1:{port}/", "t", "1", "--timeout", PATIENT)
    assert code == 1
    one_line_error(err, "pub", f"cannot reach hub at ws://127.0.0.1:{port}/: nothing is listening")


async def test_bad_url_and_topic_are_usage_errors() -> None:
    code, _, err = await run("sub", "http://127.0.0.1:9/", "t:1")
    assert code == 2
    assert "bad hub URL" in err
    code, _, err = await run("sub", "ws://127.0.0.1:9/", "no-colon")
    assert code == 2
    assert "invalid topic" in err


async def test_memory_url_is_explained() -> None:
    code, _, err = await run("pub", "memory://", "t", "1")
    assert code == 2
    one_line_error(err, "pub", "memory:// is the in-process bus of one program")


async def test_help_explains_each_command() -> None:
    code, out, _ = await run("--help")
    assert code == 0
    for command in ("hub", "sub", "pub"):
        assert command in out
        code, sub_help, _ = await run(command, "--help")
        assert code == 0
        assert "usage: alkpubsub " + command in sub_help


@pytest.mark.parametrize(
    "args",
    [
        ["sub", "ws://127.0.0.1:9/", "t:1", "--count", "0"],
        ["sub", "ws://127.0.0.1:9/", "t:1", "--count", "-3"],
        ["sub", "ws://127.0.0.1:9/", "t:1", "--timeout", "-1"],
        ["pub", "ws://127.0.0.1:9/", "t", "1", "--timeout", "0"],
        ["pub", "ws://127.0.0.1:9/", "t", "1", "--timeout", "nan"],
        ["pub", "ws://127.0.0.1:9/", "t", "1", "--header", "no colon"],
        ["hub", "--port", "99999"],
        ["hub", "--port", "-1"],
        ["hub", "--stats", "0"],
        ["hub", "--iroh", "--iroh-bind", "localhost"],
        ["hub", "--iroh", "--iroh-bind", "::1:4433"],
    ],
)
async def test_argument_checks(args: list[str]) -> None:
    code, out, err = await run(*args)
    assert code == 2
    assert out == ""
    assert f"alkpubsub {args[0]}: error: argument" in err
    assert "Traceback" not in err


# -- item 3: refusals end the command with the hub's reason ------------------------------


async def test_sub_to_a_forbidden_topic_fails_with_the_reason(guarded_hub: GuardedHub) -> None:
    code, _, err = await run("sub", guarded_hub.url, "ok:1", "secret:1", "--timeout", PATIENT)
    assert code == 1
    one_line_error(err, "sub", "hub refused (forbidden) on 'secret:1'")


async def test_pub_to_a_forbidden_topic_fails_with_the_reason(guarded_hub: GuardedHub) -> None:
    code, _, err = await run("pub", guarded_hub.url, "secret", "1", "--timeout", PATIENT)
    assert code == 1
    one_line_error(err, "pub", "hub refused (forbidden) on 'secret:1'")
    lines = b'{"type": "ok", "id": "1"}\n{"type": "secret", "id": "2"}\n'
    code, _, err = await run("pub", guarded_hub.url, "-", "--timeout", PATIENT, stdin=lines)
    assert code == 1
    one_line_error(err, "pub", "hub refused (forbidden) on 'secret:2'")


@pytest.mark.parametrize(
    ("verdict", "path", "status"), [(401, "/", 401), (403, "/", 403), (True, "/other", 404)]
)
async def test_http_refusals_fail_fast(verdict: bool | int, path: str, status: int) -> None:
    async with WebSocketHub(port=0, authenticate=lambda request: verdict) as hub:
        url = hub.url.rstrip("/") + path
        code, _, err = await run("sub", url, "t:1", "--timeout", PATIENT)
    assert code == 1
    one_line_error(err, "sub", f"HTTP {status}")


async def test_header_gets_through_authentication(guarded_hub: GuardedHub) -> None:
    url = guarded_hub.url.rstrip("/") + "/private"
    code, _, err = await run("pub", url, "t", "1", "--timeout", PATIENT)
    assert code == 1
    one_line_error(err, "pub", "HTTP 401")
    recorder = Recorder()
    guarded_hub.add_event_listener("t:1", recorder)
    code, _, err = await run("pub", url, "t", "1", "-H", "Authorization: Bearer letmein")
    assert (code, err) == (0, "")
    assert recorder.payloads == [None]


# -- item 1: wss:// from a URL, trusted through the environment or --cafile ----------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(CA file, server certificate chain with its key) for 127.0.0.1."""
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("tls")
    ca_file, server_file = directory / "ca.pem", directory / "server.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(server_file)
    )
    return ca_file, server_file


async def test_wss_hub_and_clients_from_the_command_line(tls_files: tuple[Path, Path]) -> None:
    ca_file, server_file = tls_files
    async with spawn("hub", "--port", "0", "--certfile", str(server_file)) as hub:
        url = (await within(hub.stdout.readline(), TIMEOUT)).decode().strip()  # type: ignore[union-attr]
        assert url.startswith("wss://127.0.0.1:")
        async with spawn("sub", url, "tls:1", "--count", "2", "--cafile", str(ca_file)) as sub:
            await subscribed(sub)
            # Trusted through the environment only: the URL is all the client is given.
            env = {**os.environ, "SSL_CERT_FILE": str(ca_file)}
            code, _, err = await run("pub", url, "tls", "1", '"via env"', env=env)
            assert (code, err) == (0, "")
            code, _, err = await run("pub", url, "tls", "1", '"insecure"', "--insecure")
            assert (code, err) == (0, "")
            out, _ = await within(sub.communicate(), TIMEOUT)
        assert [json.loads(line)["payload"] for line in out.decode().splitlines()] == [
            "via env",
            "insecure",
        ]
        code, _, err = await run("pub", url, "tls", "1", "--timeout", PATIENT)
        assert code == 1
        one_line_error(err, "pub", "certificate verify failed")
        hub.terminate()
        assert await within(hub.wait(), TIMEOUT) == 0


async def test_wss_url_alone_reaches_a_tls_hub_in_process(
    tls_files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 1 for the library: ``transport_from_url("wss://...")`` with the CA
    trusted through ``$SSL_CERT_FILE`` (once failed with 'ssl=None is
    incompatible with a wss:// URI')."""
    from alkpubsub import transport_from_url

    ca_file, server_file = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server_file)
    monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
    async with WebSocketHub(port=0, ssl=context) as hub:
        recorder = Recorder()
        hub.add_event_listener("tls:1", recorder)
        async with transport_from_url(hub.url) as spoke:
            spoke.dispatch_event(make_event("tls", "1", "ok"))
            await within(spoke.flush())
        assert recorder.payloads == ["ok"]


# -- item 4: no tracebacks -------------------------------------------------------------------


async def test_sub_exits_cleanly_when_its_reader_goes_away(guarded_hub: GuardedHub) -> None:
    """``alkpubsub sub ... | head -1``: after the reader closed the pipe, the next
    event ends sub quietly (once: a BrokenPipeError per event, never exiting)."""
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        *cli("sub", guarded_hub.url, "pipe:1"),
        stdout=write_end,
        stderr=asyncio.subprocess.PIPE,
    )
    os.close(write_end)
    try:
        await subscribed(process)
        guarded_hub.dispatch_event(make_event("pipe", "1", "first"))
        loop = asyncio.get_running_loop()
        first = await within(loop.run_in_executor(None, os.read, read_end, 65536), TIMEOUT)
        assert json.loads(first)["payload"] == "first"
        os.close(read_end)  # head -1 exits
        read_end = -1
        for n in range(20):  # each wait is for the process's exit, bounded
            guarded_hub.dispatch_event(make_event("pipe", "1", n))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 0.5)
                break
        assert process.returncode == 0
        err = (await within(process.stderr.read(), TIMEOUT)).decode()  # type: ignore[union-attr]
        assert "Traceback" not in err
        assert "BrokenPipe" not in err
    finally:
        if read_end >= 0:
            os.close(read_end)
        if process.returncode is None:
            process.kill()
        await within(process.wait(), TIMEOUT)


async def test_port_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = await run("hub", "--port", str(port))
    assert code == 1
    one_line_error(err, "hub", f"cannot serve on 127.0.0.1:{port}")


@pytest.fixture
def core_only_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which websockets and iroh cannot be imported, as on
    ``pip install alkpubsub`` without extras."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NotInstalled:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.partition('.')[0] in ('websockets', 'iroh'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NotInstalled())\n"
    )
    return {**os.environ, "PYTHONPATH": str(tmp_path)}


async def test_core_only_install_says_what_to_install(core_only_env: dict[str, str]) -> None:
    code, _, err = await run("hub", "--port", "0", env=core_only_env)
    assert code == 1
    one_line_error(err, "hub", "pip install 'alkpubsub[ws]'")
    code, _, err = await run("sub", "ws://127.0.0.1:9/", "t:1", env=core_only_env)
    assert code == 1
    one_line_error(err, "sub", "ws:// URLs need the ws extra: pip install 'alkpubsub[ws]'")


async def test_payload_over_the_frame_limit_is_one_line(hub_url: str) -> None:
    big = json.dumps({"type": "big", "id": "1", "payload": "x" * (1024 * 1024)}).encode()
    code, _, err = await run("pub", hub_url, "-", stdin=b'{"type": "ok", "id": "1"}\n' + big)
    assert code == 2
    one_line_error(err, "pub", "stdin line 2: encoded envelope is")


async def test_bad_iroh_key_is_one_line(tmp_path: Path, loopback_only: None) -> None:
    short_key = tmp_path / "short.key"
    short_key.write_bytes(b"12345")
    code, _, err = await run("hub", "--port", "0", "--iroh", "--iroh-key", str(short_key))
    assert code == 2
    one_line_error(err, "hub", "bad --iroh-key")
    missing_dir = tmp_path / "no" / "such" / "dir" / "hub.key"
    code, _, err = await run("hub", "--port", "0", "--iroh", "--iroh-key", str(missing_dir))
    assert code == 1
    one_line_error(err, "hub", "cannot create --iroh-key")


# -- item 10: pub - streams ------------------------------------------------------------------


async def test_pub_stdin_publishes_each_line_as_it_arrives(guarded_hub: GuardedHub) -> None:
    recorder = Recorder()
    guarded_hub.add_event_listener("tail:1", recorder)
    async with spawn("pub", guarded_hub.url, "-", stdin=asyncio.subprocess.PIPE) as process:
        assert process.stdin is not None
        process.stdin.write(b'{"type": "tail", "id": "1", "payload": 1}\n')
        await within(process.stdin.drain())
        await recorder.wait_for_count(1, TIMEOUT)  # stdin is still open
        process.stdin.write(b'{"type": "tail", "id": "1", "payload": 2}\n')
        process.stdin.close()
        assert await within(process.wait(), TIMEOUT) == 0
    assert recorder.payloads == [1, 2]


async def test_first_ctrl_c_stops_pub_reading_stdin(guarded_hub: GuardedHub) -> None:
    recorder = Recorder()
    guarded_hub.add_event_listener("tail:1", recorder)
    async with spawn("pub", guarded_hub.url, "-", stdin=asyncio.subprocess.PIPE) as process:
        assert process.stdin is not None
        process.stdin.write(b'{"type": "tail", "id": "1"}\n')
        await within(process.stdin.drain())
        await recorder.wait_for_count(1, TIMEOUT)  # running, waiting for the next line
        process.send_signal(signal.SIGINT)
        assert await within(process.wait(), TIMEOUT) == 130
        err = (await within(process.stderr.read(), TIMEOUT)).decode()  # type: ignore[union-attr]
        assert "Traceback" not in err


# -- item 8: logging and stats of the hub --------------------------------------------------


async def test_hub_verbose_logs_and_prints_stats() -> None:
    async with spawn("hub", "--port", "0", "-v", "--stats", "0.2", "--metrics") as hub:
        url = (await within(hub.stdout.readline(), TIMEOUT)).decode().strip()  # type: ignore[union-attr]
        await read_until(
            hub.stderr, lambda line: "INFO websockets.server: server listening" in line
        )
        async with spawn("sub", url, "stats:1") as sub:
            await subscribed(sub)
            lines = await read_until(
                hub.stderr, lambda line: "stats: connections=1 topics=1" in line
            )
            stats = dict(pair.split("=") for pair in lines[-1].removeprefix("stats: ").split())
            assert stats["accepted"] == "1"
            async with aiohttp.ClientSession() as session:
                base = url.replace("ws://", "http://").rstrip("/")
                async with session.get(base + "/healthz") as response:
                    assert (response.status, await response.text()) == (200, "ok\n")
                async with session.get(base + "/metrics") as response:
                    assert "alkpubsub_hub_topics 1" in await response.text()
        hub.terminate()
        assert await within(hub.wait(), TIMEOUT) == 0


async def test_hub_is_quiet_by_default_and_json_on_request() -> None:
    async with spawn("hub", "--port", "0", "--json") as hub:
        first = json.loads(await within(hub.stdout.readline(), TIMEOUT))  # type: ignore[union-attr]
        assert first["ws"].startswith("ws://127.0.0.1:")
        assert first["iroh"] is None
        code, _, _ = await run("pub", first["ws"], "quiet", "1")
        assert code == 0
        hub.terminate()
        assert await within(hub.wait(), TIMEOUT) == 0
        err = (await within(hub.stderr.read(), TIMEOUT)).decode()  # type: ignore[union-attr]
    assert err == ""


async def test_sub_quiet_prints_only_envelopes(guarded_hub: GuardedHub) -> None:
    async with spawn("sub", guarded_hub.url, "q:1", "--quiet", "--count", "1") as sub:
        await within(guarded_hub.seen["q:1"].wait(), TIMEOUT)  # subscribed
        guarded_hub.dispatch_event(make_event("q", "1", "only"))
        out, err = await within(sub.communicate(), TIMEOUT)
    assert sub.returncode == 0
    assert (json.loads(out)["payload"], err) == ("only", b"")


# -- Iroh ------------------------------------------------------------------------------------


async def test_hub_with_iroh_serves_one_bus_on_both_transports(loopback_only: None) -> None:
    async with spawn("hub", "--port", "0", "--iroh") as process:
        assert process.stdout is not None
        ws_url = (await within(process.stdout.readline(), TIMEOUT)).decode().strip()
        iroh_url = (await within(process.stdout.readline(), TIMEOUT)).decode().strip()
        assert ws_url.startswith("ws://")
        assert iroh_url.startswith("iroh://endpoint")
        # Subscribe over Iroh, publish over WebSocket: one bus.
        async with spawn("sub", iroh_url, "mixed:1", "--count", "1") as subscriber:
            await subscribed(subscriber)
            code, _, err = await run("pub", ws_url, "mixed", "1", '"over ws"')
            assert (code, err) == (0, "")
            out, _ = await within(subscriber.communicate(), TIMEOUT)
        assert json.loads(out) == {"type": "mixed", "id": "1", "payload": "over ws"}
        code, _, err = await run("pub", iroh_url, "mixed", "2")
        assert (code, err) == (0, "")
        code, _, err = await run("pub", iroh_url, "mixed", "2", "--header", "X: y")
        assert code == 2
        one_line_error(err, "pub", "apply to ws:// and wss:// URLs")
        process.terminate()
        assert await within(process.wait(), TIMEOUT) == 0


async def test_iroh_key_and_bind_keep_the_ticket_across_restarts(
    tmp_path: Path, loopback_only: None
) -> None:
    """Item 5: with --iroh-key and a fixed --iroh-bind the ticket is the same after
    a restart, so a sub holding it reconnects by itself."""
    key = tmp_path / "hub.key"
    hub_args = (
        "hub", "--port", str(free_port()), "--iroh", "--iroh-key", str(key),
        "--iroh-bind", f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}", "--json",
    )  # fmt: skip

    async def start_hub() -> tuple[Process, dict[str, str]]:
        process = await asyncio.create_subprocess_exec(
            *cli(*hub_args), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        urls = json.loads(await within(process.stdout.readline(), TIMEOUT))  # type: ignore[union-attr]
        return process, urls

    first, urls = await start_hub()
    second = None
    try:
        async with spawn("sub", urls["iroh"], "restart:1", "--count", "1", "--timeout", "2") as sub:
            await subscribed(sub)
            first.terminate()
            assert await within(first.wait(), TIMEOUT) == 0
            await read_until(sub.stderr, lambda line: "connection to the hub lost" in line)
            second, urls_again = await start_hub()
            assert urls_again == urls
            await read_until(sub.stderr, lambda line: "reconnected; subscribed" in line, 40)
            code, _, err = await run("pub", urls["ws"], "restart", "1", '"after restart"')
            assert (code, err) == (0, "")
            out, _ = await within(sub.communicate(), TIMEOUT)
        assert json.loads(out)["payload"] == "after restart"
    finally:
        for process in (first, second):
            if process is not None and process.returncode is None:
                process.terminate()
                await within(process.wait(), TIMEOUT)
