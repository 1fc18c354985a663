"""``alkpubsub``: serve a hub, subscribe, publish from the shell.

alkpubsub hub [--host H] [--port P]       serve a WebSocket hub, print its URL
              [--bridge redis://...]      ...bridged with every hub on that Redis (one bus)
alkpubsub sub URL TOPIC [TOPIC ...]       print received envelopes as JSON lines
alkpubsub pub URL TYPE ID [PAYLOAD_JSON]  publish one envelope
alkpubsub pub URL -                       publish one envelope per stdin line
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from pydantic import ValidationError

from .core.envelope import EventEnvelope, make_event, validate_topic
from .core.errors import AlkPubSubError
from .registry import transport_from_url
from .target import TypedEventTarget, dispatch_all

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CliError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alkpubsub",
        description="Typed publish/subscribe over WebSocket, Iroh and more.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hub = commands.add_parser(
        "hub",
        help="serve a WebSocket hub and print its URL",
        description="Serve a WebSocket hub until interrupted; prints its ws:// URL first.",
    )
    hub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    hub.add_argument("--port", type=int, default=8765, help="port to bind, 0 = any (default 8765)")
    hub.add_argument("--path", default="/", help="URL path served (default /)")
    hub.add_argument(
        "--iroh",
        action="store_true",
        help="also serve Iroh (P2P QUIC) on the same bus and print its iroh:// URL "
        "(endpoint bound to 127.0.0.1, relays off)",
    )
    hub.add_argument(
        "--bridge",
        metavar="URL",
        help="bridge through a broker (redis://host:port/db): every hub on the same "
        "Redis forms one bus with this one",
    )
    hub.add_argument(
        "--bridge-prefix",
        default=None,
        metavar="PREFIX",
        help="channel prefix on the broker (default alkpubsub:); hubs share a bus "
        "only with the same prefix",
    )
    hub.add_argument(
        "--iroh-key",
        metavar="FILE",
        help="iroh secret key file (created if missing) so the ticket survives restarts",
    )

    sub = commands.add_parser(
        "sub",
        help="print received envelopes as JSON lines",
        description="Subscribe to topics ('type:id') and print each envelope as one JSON line.",
    )
    sub.add_argument("url", help="ws://host:port/path, iroh://<ticket> or redis://host:port/db")
    sub.add_argument("topics", nargs="+", metavar="TOPIC", help="topic 'type:id' to subscribe")
    sub.add_argument("--count", type=int, default=None, help="exit after N envelopes")
    sub.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the hub (default 5)"
    )

    pub = commands.add_parser(
        "pub",
        help="publish an envelope (or one per stdin line with '-')",
        description=(
            "Publish one envelope: pub URL TYPE ID [PAYLOAD_JSON]. "
            "With 'pub URL -', each stdin line is a JSON envelope "
            '{"type": ..., "id": ..., "payload": ...}.'
        ),
    )
    pub.add_argument("url", help="ws://host:port/path, iroh://<ticket> or redis://host:port/db")
    pub.add_argument("type", metavar="TYPE", help="event type, or '-' to read stdin")
    pub.add_argument("id", metavar="ID", nargs="?", help="event id")
    pub.add_argument(
        "payload", metavar="PAYLOAD_JSON", nargs="?", help="JSON payload (default null)"
    )
    pub.add_argument(
        "--timeout", type=float, default=5.0, help="seconds to wait for the hub (default 5)"
    )
    return parser


def _connect(url: str, timeout: float) -> TypedEventTarget:
    try:
        return transport_from_url(url, connect_timeout=timeout)
    except (AlkPubSubError, ValueError, TypeError) as exc:
        raise CliError(f"bad hub URL {url!r}: {exc}", EXIT_USAGE) from None


async def _start(target: TypedEventTarget, url: str) -> None:
    start = getattr(target, "start", None)
    if start is None:
        return
    try:
        await start()
    except (OSError, AlkPubSubError) as exc:
        raise CliError(f"cannot reach hub at {url}: {exc}") from None


async def run_hub(args: argparse.Namespace) -> None:
    from .transports.ws import WebSocketHub

    bridge: Any = None
    if args.bridge:
        options = {} if args.bridge_prefix is None else {"prefix": args.bridge_prefix}
        try:
            bridge = transport_from_url(args.bridge, **options)
        except (AlkPubSubError, ValueError, TypeError) as exc:
            raise CliError(f"bad bridge URL {args.bridge!r}: {exc}", EXIT_USAGE) from None
    hub = WebSocketHub(host=args.host, port=args.port, path=args.path, bridge=bridge)
    iroh_acceptor = None
    if args.iroh:
        try:
            from .transports.iroh import IrohAcceptor
        except ImportError:
            raise CliError("--iroh needs the iroh extra: pip install 'alkpubsub[iroh]'") from None
        iroh_acceptor = IrohAcceptor(secret_key=args.iroh_key)
        hub.add_acceptor(iroh_acceptor)
    try:
        await hub.start()
    except (ConnectionError, AlkPubSubError) as exc:  # the bridge's broker
        await hub.aclose()
        raise CliError(f"cannot start the bridge: {exc}") from None
    except OSError as exc:
        await hub.aclose()
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    print(hub.url, flush=True)
    if iroh_acceptor is not None:
        print(f"iroh://{iroh_acceptor.ticket}", flush=True)
    try:
        await _until_interrupted()
    finally:
        await hub.aclose()


async def _until_interrupted() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def run_sub(args: argparse.Namespace) -> None:
    for topic in args.topics:
        try:
            validate_topic(topic)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    target = _connect(args.url, args.timeout)
    await _start(target, args.url)
    received = 0
    done = asyncio.Event()

    def on_event(event: Any) -> None:
        nonlocal received
        sys.stdout.write(event.detail.model_dump_json() + "\n")
        sys.stdout.flush()
        received += 1
        if args.count is not None and received >= args.count:
            done.set()

    try:
        for topic in args.topics:
            target.add_event_listener(topic, on_event)
        await target.flush(args.timeout)
        print(f"subscribed to {', '.join(args.topics)}", file=sys.stderr, flush=True)
        waiters = [asyncio.ensure_future(done.wait()), asyncio.ensure_future(_until_interrupted())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
    finally:
        await target.aclose()


def _parse_payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"PAYLOAD_JSON is not valid JSON: {exc.msg} (column {exc.colno})", EXIT_USAGE
        ) from None


def _stdin_envelopes() -> list[EventEnvelope]:
    envelopes = []
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            envelopes.append(EventEnvelope.model_validate_json(line))
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            raise CliError(
                f"stdin line {number} is not an envelope: {first['msg']}", EXIT_USAGE
            ) from None
    return envelopes


async def run_pub(args: argparse.Namespace) -> None:
    try:
        if args.type == "-":
            if args.id is not None:
                raise CliError("with '-', give no ID or PAYLOAD_JSON", EXIT_USAGE)
            events = [make_event(e.type, e.id, e.payload) for e in _stdin_envelopes()]
        else:
            if args.id is None:
                raise CliError("pub needs TYPE and ID (or '-' to read stdin)", EXIT_USAGE)
            events = [make_event(args.type, args.id, _parse_payload(args.payload))]
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    target = _connect(args.url, args.timeout)
    await _start(target, args.url)
    try:
        await dispatch_all(target, events)
        await target.flush(args.timeout)  # the hub has processed every event
    except TimeoutError:
        raise CliError(f"hub at {args.url} did not confirm within {args.timeout}s") from None
    finally:
        await target.aclose()


COMMANDS = {"hub": run_hub, "sub": run_sub, "pub": run_pub}


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(COMMANDS[args.command](args))
    except CliError as exc:
        print(f"alkpubsub {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(0)


if __name__ == "__main__":
    main()
