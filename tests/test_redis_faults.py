"""The Redis transport against bad input and faults, on real redis-servers."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio

from alkpubsub import ConnectionRefusedByHubError, make_event, transport_from_url
from alkpubsub.testing import Recorder, RedisServer, within
from alkpubsub.transports.redis import RedisEventTarget, frame_topic, redact_url

pytestmark = pytest.mark.usefixtures("redis_server_binary")


@pytest_asyncio.fixture
async def server() -> AsyncIterator[RedisServer]:
    async with RedisServer() as redis_server:
        yield redis_server


@pytest_asyncio.fixture
async def spy(server: RedisServer) -> AsyncIterator[Any]:
    client = await server.client()
    try:
        yield client
    finally:
        await client.aclose()


async def numsub(spy: Any, channel: str) -> int:
    [(_, count)] = await spy.pubsub_numsub(channel)
    return int(count)


async def command_calls(spy: Any, command: str) -> int:
    stats = await spy.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_registry_resolves_redis_urls() -> None:
    target = transport_from_url("redis://127.0.0.1:1/0", prefix="p:")
    assert isinstance(target, RedisEventTarget)
    assert target.prefix == "p:"
    assert isinstance(transport_from_url("rediss://127.0.0.1:1/0"), RedisEventTarget)
    assert redact_url("redis://user:secret@host:1/0") == "redis://user:***@host:1/0"


def test_frame_topic_reads_our_frames_and_others() -> None:
    assert frame_topic(b'{"type":"a","id":"1","payload":null}') == b"a:1"
    assert frame_topic(b'{"id": "1", "type": "a"}') == b"a:1"
    assert frame_topic(b'{"type":"a\\"b","id":"1"}') == b'a"b:1'
    for garbage in (b"not json", b"[1, 2]", b'{"type": 1, "id": "1"}', b'{"type": "a"}'):
        assert frame_topic(garbage) is None


async def test_b6_one_subscribe_per_topic_and_unsubscribe_with_the_last(
    server: RedisServer, spy: Any
) -> None:
    """B6 on Redis: three listeners make one SUBSCRIBE; the last removal
    sends UNSUBSCRIBE; flush() means Redis confirmed it."""
    async with RedisEventTarget(server.url, prefix="p:") as target:
        listeners = [Recorder(f"l{i}") for i in range(3)]
        for listener in listeners:
            target.add_event_listener("b6:t", listener)
        await within(target.flush())
        assert await numsub(spy, "p:b6:t") == 1
        assert await command_calls(spy, "subscribe") == 1
        for listener in listeners[:2]:
            target.remove_event_listener("b6:t", listener)
        await within(target.flush())
        assert await numsub(spy, "p:b6:t") == 1
        target.remove_event_listener("b6:t", listeners[2])
        await within(target.flush())
        assert await numsub(spy, "p:b6:t") == 0
        assert await command_calls(spy, "unsubscribe") == 1


async def test_garbage_on_a_channel_is_counted_and_skipped(server: RedisServer, spy: Any) -> None:
    """B10 on Redis: not JSON, wrong shapes, a topic that is not the channel's,
    a control type, an oversized message: each is counted and skipped; the
    reader goes on and delivers the next valid envelope."""
    errors: list[BaseException] = []
    target = RedisEventTarget(
        server.url,
        prefix="g:",
        max_frame_bytes=1000,
        on_listener_error=lambda exc, *_: errors.append(exc),
    )
    async with target:
        heard, control_heard = Recorder(), Recorder("control")
        target.add_event_listener("g:t", heard)
        target.add_event_listener("__pong:1", control_heard)
        await within(target.flush())
        garbage: list[tuple[str, bytes]] = [
            ("g:g:t", b"not json"),
            ("g:g:t", b"\xff\xfe invalid utf-8"),
            ("g:g:t", b"[1, 2, 3]"),
            ("g:g:t", b'{"type": "g", "payload": 1}'),
            ("g:g:t", b'{"type":"g","id":"t","payload":'),  # truncated
            ("g:g:t", b'{"type":"g","id":"other","payload":1}'),  # topic mismatch
            ("g:g:t", json.dumps({"type": "g", "id": "t", "payload": "x" * 2000}).encode()),
            ("g:__pong:1", b'{"type":"__pong","id":"1","payload":{}}'),  # E4
        ]
        for channel, data in garbage:
            await spy.publish(channel, data)
        await spy.publish("g:g:t", b'{"type":"g","id":"t","payload":"valid"}')
        await heard.wait_for_count(1)
        assert heard.payloads == ["valid"]
        assert control_heard.events == []
        assert target.stats.invalid_frames == len(garbage)
        stats = target.redis_stats
        assert stats.topic_mismatch == 1
        assert stats.oversized == 1
        assert stats.control_type == 1
        assert stats.not_envelope == 4
        assert target.connected
        assert errors == []


async def test_sigkill_mid_stream_then_restart(server: RedisServer) -> None:
    """Redis killed (SIGKILL by PID) while events flow, then started again on
    the same port: both targets reconnect and resubscribe; delivery resumes;
    what arrives arrives once and in order (at-most-once across the crash)."""
    options: dict[str, Any] = {"prefix": "k:", "backoff_initial": 0.05, "backoff_max": 0.5}
    async with (
        RedisEventTarget(server.url, **options) as listener,
        RedisEventTarget(server.url, **options) as publisher,
    ):
        heard = Recorder()
        listener.add_event_listener("k:t", heard)
        await within(listener.flush())
        stop = asyncio.Event()

        async def publish_forever() -> int:
            sequence = 0
            while not stop.is_set():
                try:
                    publisher.dispatch_event(make_event("k", "t", sequence))
                    sequence += 1
                except Exception:
                    await publisher.drain()
                if sequence % 50 == 0:
                    await asyncio.sleep(0)  # let the writer and reader run
            return sequence

        feeder = asyncio.ensure_future(publish_forever())
        await heard.wait_for_count(200)
        await within(server.kill())
        await within(listener.wait_disconnected())
        count_at_kill = len(heard.events)
        await within(server.start())
        await within(listener.wait_connected())
        await within(publisher.wait_connected())
        await heard.wait_for_count(count_at_kill + 200, timeout=20)
        stop.set()
        sent = await within(feeder)
        await within(publisher.flush())
        await within(listener.flush())
        received = heard.payloads
        assert received == sorted(set(received)), "duplicates or reordering"
        assert received[-1] < sent


async def test_refused_at_start_raises_naming_the_url() -> None:
    """Nothing listens: start() raises a ConnectionError naming the URL
    within connect_timeout (and the target is closed)."""
    from alkpubsub.testing.redis import _free_port

    url = f"redis://user:secret@127.0.0.1:{_free_port()}/0"
    target = RedisEventTarget(url, connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(ConnectionError) as caught:
        await within(target.start())
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert "127.0.0.1" in message
    assert "secret" not in message
    assert target.closed


async def test_starts_offline_then_sends_the_outbox() -> None:
    """wait_connected=False: start() returns offline, events wait in the
    outbox, and go out once a server appears (after the resubscription)."""
    from alkpubsub.testing.redis import _free_port

    port = _free_port()
    server = RedisServer(port=port)
    options: dict[str, Any] = {"prefix": "o:", "backoff_initial": 0.05, "backoff_max": 0.2}
    url = f"redis://127.0.0.1:{port}/0"
    async with RedisEventTarget(url, wait_connected=False, **options) as target:
        assert not target.connected
        heard = Recorder()
        target.add_event_listener("o:t", heard)
        for i in range(3):
            target.dispatch_event(make_event("o", "t", i))
        async with server:
            await within(target.wait_connected())
            await heard.wait_for_count(3)
            assert heard.payloads == [0, 1, 2]


async def test_wrong_password_is_one_clear_error() -> None:
    """A wrong password: start() raises ConnectionRefusedByHubError at once
    (one attempt, no retry loop), naming the URL without the password."""
    async with RedisServer(password="right") as server:
        url = server.url.replace(":right@", ":wrong@")
        target = RedisEventTarget(url, connect_timeout=5.0)
        started = time.monotonic()
        with pytest.raises(ConnectionRefusedByHubError) as caught:
            await within(target.start())
        assert time.monotonic() - started < 2.5
        assert target.connect_attempts == 1
        assert "wrong" not in str(caught.value)
        assert str(server.port) in str(caught.value)


async def test_wrong_password_while_running_is_backed_off() -> None:
    """Offline start with a wrong password: refusals are reported to on_error
    and retried with backoff, never in a tight loop."""
    async with RedisServer(password="right") as server:
        url = server.url.replace(":right@", ":wrong@")
        refusals: list[float] = []
        three = asyncio.Event()

        def on_error(exc: BaseException) -> None:
            if isinstance(exc, ConnectionRefusedByHubError):
                refusals.append(time.monotonic())
                if len(refusals) == 3:
                    three.set()

        async with RedisEventTarget(
            url, wait_connected=False, on_error=on_error, backoff_initial=0.2, backoff_max=0.4
        ):
            await within(three.wait())
        # Equal jitter: the waits are at least 0.1 s and 0.2 s.
        assert refusals[2] - refusals[0] >= 0.29


async def test_caller_owned_client_stays_open(server: RedisServer, spy: Any) -> None:
    """client=: the target uses the client's settings for its own two
    connections; aclose() leaves the client open."""
    from redis.asyncio import Redis

    client = Redis.from_url(server.url, decode_responses=True)
    try:
        async with RedisEventTarget(client=client, prefix="c:") as target:
            heard = Recorder()
            target.add_event_listener("c:t", heard)
            await within(target.flush())
            target.dispatch_event(make_event("c", "t", "hello"))
            await heard.wait_for_count(1)
        assert await client.ping()
        assert await numsub(spy, "c:c:t") == 0
    finally:
        await client.aclose()


async def test_echo_false_never_hears_itself(server: RedisServer) -> None:
    """echo=False (a hub's bridge): a target's own publications are marked
    and dropped when they come back; other targets hear them."""
    async with (
        RedisEventTarget(server.url, prefix="e:", echo=False) as quiet,
        RedisEventTarget(server.url, prefix="e:") as other,
    ):
        quiet_heard, other_heard = Recorder("quiet"), Recorder("other")
        quiet.add_event_listener("e:t", quiet_heard)
        other.add_event_listener("e:t", other_heard)
        await within(quiet.flush())
        await within(other.flush())
        quiet.dispatch_event(make_event("e", "t", "from quiet"))
        other.dispatch_event(make_event("e", "t", "from other"))
        await other_heard.wait_for_count(2)
        await quiet_heard.wait_for_count(1)
        assert quiet_heard.payloads == ["from other"]
        assert sorted(other_heard.payloads) == ["from other", "from quiet"]
        assert quiet.redis_stats.own_echoes == 1


async def test_rediss_url_over_tls(tmp_path: Any) -> None:
    """rediss:// connects over TLS (a real redis-server with a test CA)."""
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    files = [tmp_path / name for name in ("cert.pem", "key.pem", "ca.pem")]
    cert.cert_chain_pems[0].write_to_path(files[0])
    cert.private_key_pem.write_to_path(files[1])
    ca.cert_pem.write_to_path(files[2])
    tls = (str(files[0]), str(files[1]), str(files[2]))
    async with RedisServer(tls=tls) as server:
        assert server.url.startswith("rediss://")
        target = transport_from_url(
            server.url, prefix="s:", redis_options={"ssl_ca_certs": str(files[2])}
        )
        async with target:
            heard = Recorder()
            target.add_event_listener("s:t", heard)
            await within(target.flush())
            target.dispatch_event(make_event("s", "t", "secure"))
            await heard.wait_for_payload("secure")


async def test_acl_refused_subscribe_is_reported_not_fatal(server: RedisServer, spy: Any) -> None:
    """An ACL user without access to a channel: that SUBSCRIBE and that PUBLISH
    are refused, reported to on_error (HubRefusalError 'forbidden') and counted;
    the target stays connected and its allowed topics work."""
    from alkpubsub import HubRefusalError

    await spy.execute_command(
        "ACL", "SETUSER", "limited", "on", ">pw", "resetchannels", "&a:ok:*", "+@all", "~*"
    )
    refused = asyncio.Event()
    errors: list[BaseException] = []

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        if isinstance(exc, HubRefusalError):
            refused.set()

    url = f"redis://limited:pw@127.0.0.1:{server.port}/0"
    async with RedisEventTarget(url, prefix="a:", on_error=on_error) as target:
        allowed, forbidden = Recorder("allowed"), Recorder("forbidden")
        target.add_event_listener("nope:t", forbidden)
        target.add_event_listener("ok:t", allowed)
        await within(refused.wait())
        await within(target.flush())
        target.dispatch_event(make_event("nope", "t", "refused"))
        target.dispatch_event(make_event("ok", "t", "fine"))
        await allowed.wait_for_payload("fine")
        # The refusal is counted when the publisher reads Redis's reply, which may
        # come after the delivery on the subscriber connection: flush waits for it.
        await within(target.flush())
        assert target.redis_stats.subscribe_errors == 1
        assert target.redis_stats.publish_errors == 1
        assert target.connected
        assert forbidden.events == []
        assert [getattr(e, "code", None) for e in errors] == ["forbidden", "forbidden"]


async def test_cli_sub_and_pub_straight_on_redis(server: RedisServer) -> None:
    """The README's `alkpubsub sub/pub redis://...`: the CLI works on Redis too."""
    import sys

    subscriber = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alkpubsub", "sub", server.url, "cli.test:1", "--count", "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert subscriber.stderr is not None
    ready = await within(subscriber.stderr.readline(), 15)
    assert b"subscribed" in ready
    publisher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "alkpubsub", "pub", server.url, "cli.test", "1", '{"n": 1}',
    )  # fmt: skip
    assert await within(publisher.wait(), 15) == 0
    out, _ = await within(subscriber.communicate(), 15)
    assert json.loads(out) == {"type": "cli.test", "id": "1", "payload": {"n": 1}}
    assert subscriber.returncode == 0
