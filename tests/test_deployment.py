"""docs/deployment.md's nginx recipe, run for real: Debian's nginx terminates TLS
in front of a hub, with the configuration block of the docs (only the listen
address, certificate paths and upstream port replaced).

Runs inside the loopback-only namespace (like the whole suite in CI); nginx is
installed by .ci/run. Outside CI a missing nginx skips these tests.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
import trustme

from alkpubsub import make_event, transport_from_url
from alkpubsub.core.router import Peer
from alkpubsub.testing import Recorder, within
from alkpubsub.transports.ws import WebSocketHub

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 15.0
NGINX_BLOCK = re.compile(r"```nginx\n(?P<config>.*?)^```", re.S | re.M)


def documented_nginx_config() -> str:
    text = (ROOT / "docs" / "deployment.md").read_text()
    match = NGINX_BLOCK.search(text)
    assert match is not None, "docs/deployment.md has no nginx block"
    return match.group("config")


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"the documented config no longer has {old!r} once"
    return text.replace(old, new)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Proxy:
    url: str  # wss://127.0.0.1:<port>/
    ca_file: Path


@pytest.fixture
def nginx() -> str:
    path = shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/sbin/nginx") if os.path.exists(p)), None
    )
    if path is None:
        message = "nginx is not installed (apt-get install nginx-light; .ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
async def hub() -> AsyncIterator[WebSocketHub]:
    async with WebSocketHub(port=0, health_path="/healthz", metrics_path="/metrics") as hub:
        yield hub


@pytest.fixture
async def proxy(
    nginx: str, hub: WebSocketHub, tmp_path: Path, loopback_only: None
) -> AsyncIterator[Proxy]:
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_file))
    certificate.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))

    hub_port = hub.url.rsplit(":", 1)[1].strip("/")
    port = free_port()
    site = documented_nginx_config()
    site = replace_once(site, "listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;")
    site = replace_once(site, "/etc/ssl/certs/pubsub.pem", str(cert_file))
    site = replace_once(site, "/etc/ssl/private/pubsub.key", str(key_file))
    site = replace_once(site, "server 127.0.0.1:8765;", f"server 127.0.0.1:{hub_port};")
    # The main context Debian's /etc/nginx/nginx.conf would provide, in a temp dir.
    temp = {name: tmp_path / name for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    config = tmp_path / "nginx.conf"
    config.write_text(
        "daemon off;\n"
        "user root;\n"  # workers may read the temp dir (ignored when not root)
        f"pid {tmp_path / 'nginx.pid'};\n"
        "error_log stderr notice;\n"
        "events {}\n"
        "http {\n"
        "    access_log off;\n"
        + "".join(f"    {name}_temp_path {path};\n" for name, path in temp.items())
        + site
        + "}\n"
    )
    process = await asyncio.create_subprocess_exec(
        nginx, "-p", str(tmp_path), "-c", str(config), "-e", "stderr",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    log: list[str] = []
    try:
        # The master opens its listening sockets before it starts workers.
        while not any("start worker process" in line for line in log):
            line = await within(process.stderr.readline(), TIMEOUT)
            assert line, f"nginx exited: {''.join(log)}"
            log.append(line.decode())
        yield Proxy(f"wss://127.0.0.1:{port}/", ca_file)
    finally:
        if process.returncode is None:
            process.terminate()
        await within(process.wait(), TIMEOUT)


async def test_events_flow_both_ways_through_nginx(
    proxy: Proxy, hub: WebSocketHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    peers: list[Peer] = []
    from_spoke = Recorder("hub")
    hub.add_event_listener("through:proxy", from_spoke)
    # What a user configures: the URL, and the CA the system trusts.
    monkeypatch.setenv("SSL_CERT_FILE", str(proxy.ca_file))
    to_spoke = Recorder("spoke")
    async with transport_from_url(proxy.url) as spoke:
        spoke.add_event_listener("back:again", to_spoke)
        await within(spoke.flush())
        peers.extend(hub.peers)
        spoke.dispatch_event(make_event("through", "proxy", {"n": 1}))
        await from_spoke.wait_for_count(1)
        hub.dispatch_event(make_event("back", "again", {"n": 2}))
        await to_spoke.wait_for_count(1)
    assert from_spoke.payloads == [{"n": 1}]
    assert to_spoke.payloads == [{"n": 2}]
    (peer,) = peers
    assert peer.headers.get("x-forwarded-for") == "127.0.0.1"
    assert peer.headers.get("x-forwarded-proto") == "https"


async def test_health_and_metrics_through_nginx(proxy: Proxy) -> None:
    import ssl

    context = ssl.create_default_context(cafile=str(proxy.ca_file))
    base = proxy.url.replace("wss://", "https://").rstrip("/")
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/healthz", ssl=context) as response:
            assert (response.status, await within(response.text())) == (200, "ok\n")
        async with session.get(base + "/metrics", ssl=context) as response:
            assert response.status == 200
            assert "alkpubsub_hub_up 1" in await within(response.text())
