"""``alkpubsub``: serve a hub, subscribe, publish from the shell.

alkpubsub --version                                print the version
alkpubsub hub [--host H] [--port P] [--iroh ...]   serve a hub, print its URL(s)
              [--bridge redis://...]               ...bridged with every hub on that Redis (one bus)
alkpubsub sub URL TOPIC [TOPIC ...]                print received envelopes as JSON lines
alkpubsub pub URL TYPE ID [PAYLOAD_JSON]           publish one envelope
alkpubsub pub URL -                                publish one envelope per stdin line, as read

Errors are one line on stderr: exit status 1 for a failure (unreachable, refused,
timed out), 2 for bad usage or input, 130 when interrupted during ``pub``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import ipaddress
import json
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from importlib.util import find_spec
from typing import Any, NoReturn, TypeVar

from pydantic import ValidationError

from ._version import __version__
from .core.close import CloseCode
from .core.codec import DEFAULT_MAX_FRAME_BYTES, encode_envelope
from .core.envelope import Event, EventEnvelope, make_event, validate_topic
from .core.errors import (
    AlkPubSubError,
    BackpressureError,
    ConnectionRefusedByHubError,
    HubRefusalError,
    LinkClosedError,
    MissingExtraError,
)
from .registry import Transport, transport_from_url
from .transports.ws_backends import WS_BACKENDS

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Lines of stdin read ahead of what was published (``pub -``): bounded memory.
STDIN_READ_AHEAD = 64
#: URL schemes and the module and extra each needs.
SCHEME_EXTRAS = {"ws": ("websockets", "ws"), "wss": ("websockets", "ws"), "iroh": ("iroh", "iroh")}

T = TypeVar("T")
logger = logging.getLogger(__name__)


class CliError(Exception):
    """A one-line error for the user; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


# -- argument types ---------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, not {text}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0 = any free port), not {value}")
    return value


def _socket_address(text: str) -> str:
    """``host:port`` with an IP address (``[v6]:port`` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, not {text!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an IP address: {host!r}") from None
    if address.version == 6 and bare == host:
        raise argparse.ArgumentTypeError(f"write IPv6 addresses in brackets: [{host}]:{port}")
    return f"{host}:{_port(port)}"


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', not {text!r}")
    return name, value.strip()


# -- the parser ----------------------------------------------------------------------------


def _logging_options(parser: argparse.ArgumentParser, default: str) -> None:
    group = parser.add_argument_group("logging")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v info, -vv debug (the library's and websockets' loggers)",
    )
    group.add_argument(
        "--log-level",
        choices=LOG_LEVELS,
        default=None,
        help=f"log level on stderr (default {default})",
    )
    parser.set_defaults(default_log_level=default)


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        help="seconds to wait for the hub to connect and to confirm (default 5)",
    )
    group = parser.add_argument_group("ws:// and wss:// URLs")
    group.add_argument(
        "-H",
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="extra HTTP header for the upgrade, e.g. 'Authorization: Bearer ...' (repeatable)",
    )
    group.add_argument(
        "--cafile",
        metavar="PEM",
        help="trust the CA certificates in this file for wss:// "
        "(default: the system's, or $SSL_CERT_FILE)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="wss:// without verifying the hub's certificate (tests only)",
    )
    _ws_backend_option(group)


def _ws_backend_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--ws-backend",
        choices=WS_BACKENDS,
        default="auto",
        help="WebSocket library: auto (default) = picows if installed (alkpubsub[fast]), "
        "else websockets; $ALKPUBSUB_WS_BACKEND overrides auto",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alkpubsub",
        description="Typed publish/subscribe over WebSocket, Iroh and more.",
    )
    parser.add_argument("--version", action="version", version=f"alkpubsub {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    hub = commands.add_parser(
        "hub",
        help="serve a WebSocket hub and print its URL",
        description="Serve a hub until SIGINT/SIGTERM; prints its ws:// URL first "
        "(and its iroh:// URL with --iroh).",
    )
    hub.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    hub.add_argument(
        "--port", type=_port, default=8765, help="port to bind, 0 = any (default 8765)"
    )
    hub.add_argument("--path", default="/", help="URL path served (default /)")
    hub.add_argument("--certfile", metavar="PEM", help="serve wss:// with this certificate chain")
    hub.add_argument("--keyfile", metavar="PEM", help="the private key of --certfile")
    hub.add_argument(
        "--metrics",
        action="store_true",
        help="serve GET /healthz and GET /metrics (Prometheus text) on the same port",
    )
    hub.add_argument(
        "--stats",
        type=_positive_float,
        metavar="SECONDS",
        help="print a one-line summary of the hub's counters to stderr every SECONDS",
    )
    hub.add_argument(
        "--json",
        action="store_true",
        help='print the URLs as one JSON object ({"ws": ..., "iroh": ...}) and stats as JSON',
    )
    _ws_backend_option(hub)
    hub.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="event loop: auto (default) = uvloop if installed (alkpubsub[fast]), else asyncio's",
    )
    iroh = hub.add_argument_group("Iroh")
    iroh.add_argument(
        "--iroh",
        action="store_true",
        help="also serve Iroh (P2P QUIC) on the same bus and print its iroh:// URL (relays off)",
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
    iroh.add_argument(
        "--iroh-key",
        metavar="FILE",
        help="iroh secret key file (created if missing): keeps the endpoint id across restarts",
    )
    iroh.add_argument(
        "--iroh-bind",
        type=_socket_address,
        metavar="HOST:PORT",
        help="UDP address of the iroh endpoint (default 127.0.0.1:0, a random port); "
        "with --iroh-key a fixed port keeps the whole ticket across restarts",
    )
    _logging_options(hub, "warning")

    sub = commands.add_parser(
        "sub",
        help="print received envelopes as JSON lines",
        description="Subscribe to topics ('type:id') and print each envelope as one JSON "
        "line. Status lines ('subscribed to ...', reconnects) go to stderr.",
    )
    sub.add_argument(
        "url",
        help="hub URL: ws://host:port/path, wss://... iroh://<ticket> or redis://host:port/db",
    )
    sub.add_argument("topics", nargs="+", metavar="TOPIC", help="topic 'type:id' to subscribe")
    sub.add_argument("--count", type=_positive_int, default=None, help="exit after N envelopes")
    sub.add_argument("-q", "--quiet", action="store_true", help="no status lines on stderr")
    _client_options(sub)
    _logging_options(sub, "error")

    pub = commands.add_parser(
        "pub",
        help="publish an envelope (or one per stdin line with '-')",
        description=(
            "Publish one envelope: pub URL TYPE ID [PAYLOAD_JSON]. "
            "With 'pub URL -', each stdin line is a JSON envelope "
            '{"type": ..., "id": ..., "payload": ...}, published as soon as it is read; '
            "exits once the hub confirmed every line after the end of input."
        ),
    )
    pub.add_argument(
        "url",
        help="hub URL: ws://host:port/path, wss://... iroh://<ticket> or redis://host:port/db",
    )
    pub.add_argument("type", metavar="TYPE", help="event type, or '-' to read stdin")
    pub.add_argument("id", metavar="ID", nargs="?", help="event id")
    pub.add_argument(
        "payload", metavar="PAYLOAD_JSON", nargs="?", help="JSON payload (default null)"
    )
    _client_options(pub)
    _logging_options(pub, "error")
    return parser


def configure_logging(args: argparse.Namespace) -> None:
    if args.log_level is not None:
        level = args.log_level
    elif args.verbose:
        level = "debug" if args.verbose > 1 else "info"
    else:
        level = args.default_log_level
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# -- connecting as a client ---------------------------------------------------------------


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def _client_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if args.cafile is not None:
        try:
            return ssl.create_default_context(cafile=args.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise CliError(f"cannot load --cafile {args.cafile}: {exc}", EXIT_USAGE) from None
    return None  # the library's default: the system's CAs, or $SSL_CERT_FILE


def _installed(module: str) -> bool:
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _describe(exc: BaseException) -> str:
    """``str()`` of an exception; the iroh bindings keep theirs in ``message()``."""
    message = getattr(exc, "message", None)
    if callable(message):
        with contextlib.suppress(Exception):
            return str(message())
    return str(exc) or repr(exc)


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status of a refused WebSocket upgrade, if that is what ``exc`` is."""
    response = getattr(exc.__cause__, "response", None)
    status = getattr(response, "status_code", None)
    if status is None:  # the picows backend's response (alkpubsub[fast])
        status = getattr(response, "status", None)
    return int(status) if isinstance(status, int) else None


def _nobody_listening(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionRefusedError):
        return True
    # asyncio joins the errors of several addresses (localhost: ::1 and 127.0.0.1).
    return isinstance(exc, OSError) and f"[Errno {errno.ECONNREFUSED}]" in str(exc)


class HubClient:
    """A spoke for one CLI command: fails fast on what retrying cannot fix (a
    refusal, an HTTP error, a bad certificate, nothing listening at start) and
    reports reconnects on stderr."""

    def __init__(self, args: argparse.Namespace, *, status_lines: bool) -> None:
        self.url: str = args.url
        self.timeout: float = args.timeout
        self.status_lines = status_lines
        self.on_reconnect: Callable[[], None] | None = None
        self.connected_once = False
        self._failure: asyncio.Future[CliError] = asyncio.get_running_loop().create_future()
        self.target = self._make_target(args)

    def _make_target(self, args: argparse.Namespace) -> Transport:
        scheme = _scheme(self.url)
        if scheme == "memory":
            raise CliError(
                "memory:// is the in-process bus of one program; the CLI needs a hub URL "
                "(ws://, wss:// or iroh://)",
                EXIT_USAGE,
            )
        module, extra = SCHEME_EXTRAS.get(scheme, (None, None))
        if module is not None and not _installed(module):
            raise CliError(
                f"{scheme}:// URLs need the {extra} extra: pip install 'alkpubsub[{extra}]'"
            )
        options: dict[str, Any] = {
            "connect_timeout": self.timeout,
            "on_error": self._on_error,
            "on_connect": self._on_connect,
            "on_disconnect": self._on_disconnect,
        }
        if scheme in ("ws", "wss"):
            options["headers"] = dict(args.header)
            options["backend"] = args.ws_backend
            tls = _client_tls(args) if scheme == "wss" else None
            if tls is not None:
                options["ssl"] = tls
        elif args.header or args.cafile or args.insecure or args.ws_backend != "auto":
            raise CliError(
                "--header, --cafile, --insecure and --ws-backend apply to ws:// and wss:// URLs",
                EXIT_USAGE,
            )
        try:
            return transport_from_url(self.url, **options)
        except (AlkPubSubError, ValueError, TypeError) as exc:
            raise CliError(f"bad hub URL {self.url!r}: {exc}", EXIT_USAGE) from None

    # -- the spoke's callbacks (run on the loop) --

    def fail(self, error: CliError) -> None:
        if not self._failure.done():
            self._failure.set_result(error)

    def _on_error(self, exc: BaseException) -> None:
        if isinstance(exc, HubRefusalError | ConnectionRefusedByHubError):
            self.fail(CliError(str(exc)))
        elif isinstance(exc, ssl.SSLError) or _http_status(exc) is not None:
            self.fail(CliError(f"cannot reach hub at {self.url}: {exc}"))
        elif not self.connected_once and _nobody_listening(exc):
            self.fail(CliError(f"cannot reach hub at {self.url}: nothing is listening ({exc})"))

    def _on_connect(self) -> None:
        if self.connected_once and self.on_reconnect is not None:
            self.on_reconnect()
        self.connected_once = True

    def _on_disconnect(self, reason: BaseException | None) -> None:
        if isinstance(reason, LinkClosedError) and reason.code == CloseCode.POLICY_VIOLATION:
            self.fail(CliError(f"hub closed the connection: {reason}"))
        elif self.status_lines:
            why = f" ({reason})" if reason is not None else ""
            status(f"connection to the hub lost{why}; reconnecting")

    # -- running --

    async def guarded(self, work: Awaitable[T]) -> T:
        """Await ``work`` unless the hub refuses something first."""
        task = asyncio.ensure_future(work)
        try:
            waiting: set[asyncio.Future[Any]] = {task, self._failure}
            await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            raise
        if self._failure.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            raise self._failure.result()
        return task.result()

    async def start(self) -> None:
        try:
            await self.guarded(self.target.start())
        except ConnectionError as exc:
            raise CliError(f"cannot reach hub at {self.url}: {exc}") from None

    async def confirm(self) -> None:
        """Wait until the hub processed everything sent so far (and refused nothing)."""
        try:
            await self.guarded(self.target.flush(self.timeout))
        except TimeoutError:
            raise CliError(f"hub at {self.url} did not confirm within {self.timeout}s") from None

    async def failed(self) -> CliError:
        return await asyncio.shield(self._failure)

    async def aclose(self) -> None:
        await self.target.aclose()


def status(message: str) -> None:
    """A status line on stderr (not an error)."""
    print(f"alkpubsub sub: {message}", file=sys.stderr, flush=True)


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _first(*awaitables: Awaitable[Any]) -> None:
    """Wait for the first of ``awaitables``; cancel the others; re-raise its error."""
    tasks = [asyncio.ensure_future(awaitable) for awaitable in awaitables]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            raise error


# -- hub -------------------------------------------------------------------------------------


def _server_tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.certfile is None and args.keyfile is None:
        return None
    if args.certfile is None:
        raise CliError("--keyfile needs --certfile", EXIT_USAGE)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.certfile, args.keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(f"cannot load --certfile/--keyfile: {exc}", EXIT_USAGE) from None
    return context


def _iroh_acceptor(args: argparse.Namespace) -> Any:
    if not args.iroh:
        if args.iroh_key or args.iroh_bind:
            raise CliError("--iroh-key and --iroh-bind need --iroh", EXIT_USAGE)
        return None
    try:
        from .transports.iroh import DEFAULT_BIND, IrohAcceptor
    except ImportError:
        raise CliError("--iroh needs the iroh extra: pip install 'alkpubsub[iroh]'") from None
    try:
        return IrohAcceptor(secret_key=args.iroh_key, bind_addr=args.iroh_bind or DEFAULT_BIND)
    except ValueError as exc:
        raise CliError(f"bad --iroh-key: {exc}", EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot create --iroh-key {args.iroh_key}: {exc.strerror or exc}") from None


async def run_hub(args: argparse.Namespace) -> None:
    try:
        from .transports.ws import WebSocketHub
    except ImportError:
        raise CliError("the hub needs the ws extra: pip install 'alkpubsub[ws]'") from None
    if args.metrics and args.path in ("/healthz", "/metrics"):
        raise CliError(f"--path {args.path} is taken by --metrics", EXIT_USAGE)
    bridge: Any = None
    if args.bridge:
        options = {} if args.bridge_prefix is None else {"prefix": args.bridge_prefix}
        try:
            bridge = transport_from_url(args.bridge, **options)
        except (AlkPubSubError, ValueError, TypeError) as exc:
            raise CliError(f"bad bridge URL {args.bridge!r}: {exc}", EXIT_USAGE) from None
    try:
        hub = WebSocketHub(
            host=args.host,
            port=args.port,
            path=args.path,
            ssl=_server_tls(args),
            health_path="/healthz" if args.metrics else None,
            metrics_path="/metrics" if args.metrics else None,
            bridge=bridge,
            backend=args.ws_backend,
        )
    except (MissingExtraError, ValueError) as exc:  # --ws-backend, $ALKPUBSUB_WS_BACKEND
        raise CliError(str(exc)) from None
    iroh_acceptor = _iroh_acceptor(args)
    if iroh_acceptor is not None:
        hub.add_acceptor(iroh_acceptor)
    try:
        await hub.start()
    except (ConnectionError, AlkPubSubError) as exc:  # the bridge's broker
        raise CliError(f"cannot start the bridge: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except Exception as exc:  # the iroh bindings raise their own errors
        raise CliError(f"cannot start the hub: {_describe(exc)}") from None
    loop = type(asyncio.get_running_loop())
    logger.info(
        "WebSocket backend %s, event loop %s.%s", hub.backend, loop.__module__, loop.__name__
    )
    try:
        iroh_url = None if iroh_acceptor is None else _iroh_url(iroh_acceptor, args.iroh_bind)
        if args.json:
            print(json.dumps({"ws": hub.url, "iroh": iroh_url}), flush=True)
        else:
            print(hub.url, flush=True)
            if iroh_url is not None:
                print(iroh_url, flush=True)
        waiters: list[Awaitable[None]] = [_until_signalled()]
        if args.stats is not None:
            waiters.append(_print_stats(hub, args.stats, as_json=args.json))
        await _first(*waiters)
    finally:
        await hub.aclose()


def _iroh_url(acceptor: Any, bind: str | None) -> str:
    """``iroh://<ticket>``. With a fixed port, the ticket lists only the addresses on
    that port: iroh also binds IPv6 on a random port, which would change the
    ticket at every restart."""
    port = None if bind is None else bind.rpartition(":")[2]
    if port in (None, "0"):
        return f"iroh://{acceptor.ticket}"
    from iroh import EndpointAddr, EndpointTicket

    endpoint = acceptor.endpoint
    kept = [a for a in endpoint.addr().direct_addresses() if a.rpartition(":")[2] == port]
    return f"iroh://{EndpointTicket.from_addr(EndpointAddr(endpoint.id(), None, kept))}"


async def _print_stats(hub: Any, interval: float, *, as_json: bool) -> None:
    from .metrics import snapshot

    while True:
        await asyncio.sleep(interval)  # a period, not a wait for a condition
        values = snapshot(hub)
        if as_json:
            line = json.dumps({"stats": values})
        else:
            line = "stats: " + " ".join(f"{key}={value}" for key, value in values.items())
        print(line, file=sys.stderr, flush=True)


# -- sub -------------------------------------------------------------------------------------


class _Output:
    """Writes JSON lines to stdout; notices when the reader went away."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def write(self, line: str) -> None:
        if self.closed.is_set():
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except BrokenPipeError:  # `| head -1`: the reader has what it wanted
            # Python would flush stdout again at exit and report the same error.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            self.closed.set()


async def run_sub(args: argparse.Namespace) -> None:
    for topic in args.topics:
        try:
            validate_topic(topic)
        except ValueError as exc:
            raise CliError(str(exc), EXIT_USAGE) from None
    client = HubClient(args, status_lines=not args.quiet)
    output = _Output()
    received = 0
    done = asyncio.Event()

    def on_event(event: Event) -> None:
        nonlocal received
        if done.is_set():
            return
        output.write(event.detail.model_dump_json())
        received += 1
        if args.count is not None and received >= args.count:
            done.set()

    subscribed = f"subscribed to {', '.join(args.topics)}"
    confirming: set[asyncio.Task[None]] = set()

    async def announce_resubscribed() -> None:
        with contextlib.suppress(CliError, TimeoutError):
            await client.confirm()
            if not args.quiet:
                status(f"reconnected; {subscribed}")

    def on_reconnect() -> None:
        task = asyncio.ensure_future(announce_resubscribed())
        confirming.add(task)
        task.add_done_callback(confirming.discard)

    client.on_reconnect = on_reconnect
    try:
        await client.start()
        for topic in args.topics:
            client.target.add_event_listener(topic, on_event)
        await client.confirm()
        if not args.quiet:
            status(subscribed)
        await _first(done.wait(), output.closed.wait(), _until_signalled(), _raise_failure(client))
    finally:
        for task in confirming:
            task.cancel()
        await client.aclose()


async def _raise_failure(client: HubClient) -> None:
    raise await client.failed()


# -- pub -------------------------------------------------------------------------------------


def _parse_payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(
            f"PAYLOAD_JSON is not valid JSON: {exc.msg} (column {exc.colno})", EXIT_USAGE
        ) from None


def _checked_event(type_: str, id_: str, payload: Any, where: str = "") -> Event:
    """An event that the hub can take: valid type and id, JSON, under E6."""
    try:
        event = make_event(type_, id_, payload)
        encode_envelope(event.detail, DEFAULT_MAX_FRAME_BYTES)
    except ValueError as exc:
        raise CliError(f"{where}{exc}", EXIT_USAGE) from None
    return event


def _line_event(number: int, line: bytes) -> Event | None:
    if not line.strip():
        return None
    where = f"stdin line {number}: "
    try:
        envelope = EventEnvelope.model_validate_json(line)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        raise CliError(
            f"stdin line {number} is not an envelope: {first['msg']}", EXIT_USAGE
        ) from None
    return _checked_event(envelope.type, envelope.id, envelope.payload, where)


async def _stdin_lines(max_line_bytes: int) -> AsyncIterator[bytes]:
    """Lines of stdin as they arrive, read by a thread (pipes, files and terminals
    alike, and Ctrl-C is never held up by a blocking read). At most
    ``STDIN_READ_AHEAD`` lines are read ahead of the consumer; a line longer
    than ``max_line_bytes`` comes back as its first ``max_line_bytes + 1`` bytes."""
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
    room = threading.Semaphore(STDIN_READ_AHEAD)
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, ValueError, OSError):
        raise CliError("'-' needs a standard input", EXIT_USAGE) from None

    def next_line(pending: bytearray) -> bytes:
        while True:
            newline = pending.find(b"\n", 0, max_line_bytes + 1)
            if newline >= 0 or len(pending) > max_line_bytes:
                end = newline + 1 if newline >= 0 else max_line_bytes + 1
                line = bytes(pending[:end])
                del pending[:end]
                return line
            # os.read, not sys.stdin: a daemon thread blocked inside a buffered
            # reader's lock would abort the interpreter's shutdown after Ctrl-C.
            chunk = os.read(fd, 65536)
            if not chunk:
                line = bytes(pending)
                pending.clear()
                return line
            pending += chunk

    def read() -> None:
        pending = bytearray()
        try:
            while True:
                room.acquire()
                line = next_line(pending)
                loop.call_soon_threadsafe(lines.put_nowait, line or None)
                if not line:
                    return
        except BaseException as exc:  # handed to the loop, raised there
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody to tell
                loop.call_soon_threadsafe(lines.put_nowait, exc)

    # A daemon thread: an interrupted pub exits without waiting for a read to return.
    threading.Thread(target=read, name="alkpubsub-stdin", daemon=True).start()
    while True:
        item = await lines.get()
        if item is None:
            return
        if isinstance(item, BaseException):
            raise CliError(f"cannot read stdin: {item}")
        room.release()
        yield item


async def _publish_stream(client: HubClient) -> int:
    target = client.target
    count = 0
    limit = DEFAULT_MAX_FRAME_BYTES * 2  # an envelope's line, however it is spaced
    async for line in _stdin_lines(limit):
        count += 1
        if len(line) > limit:
            raise CliError(f"stdin line {count} is longer than {limit} bytes", EXIT_USAGE)
        event = _line_event(count, line)
        if event is None:
            continue
        while True:
            try:
                target.dispatch_event(event)
                break
            except BackpressureError:  # the hub is slower than stdin: wait for it
                await target.drain()
    return count


async def run_pub(args: argparse.Namespace) -> None:
    if args.type == "-":
        if args.id is not None:
            raise CliError("with '-', give no ID or PAYLOAD_JSON", EXIT_USAGE)
        events = None
    else:
        if args.id is None:
            raise CliError("pub needs TYPE and ID (or '-' to read stdin)", EXIT_USAGE)
        events = [_checked_event(args.type, args.id, _parse_payload(args.payload))]
    client = HubClient(args, status_lines=False)
    try:
        await client.start()
        if events is None:
            try:
                await client.guarded(_publish_stream(client))
            except CliError as exc:
                if exc.code == EXIT_USAGE:  # a bad line: the lines before it still count
                    with contextlib.suppress(CliError):
                        await client.confirm()
                raise
        else:
            client.target.dispatch_event(events[0])
        await client.confirm()  # the hub processed (and refused nothing of) every event
    finally:
        await client.aclose()


COMMANDS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, None]]] = {
    "hub": run_hub,
    "sub": run_sub,
    "pub": run_pub,
}


def _loop_factory(args: argparse.Namespace) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop of the command: ``hub --loop`` (uvloop when installed, as
    uvicorn does); asyncio's for the others."""
    choice = getattr(args, "loop", "asyncio")
    if choice == "asyncio" or (choice == "auto" and not _installed("uvloop")):
        return None
    try:
        import uvloop
    except ImportError:
        raise CliError("--loop uvloop needs uvloop: pip install 'alkpubsub[fast]'") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    try:
        with asyncio.Runner(loop_factory=_loop_factory(args)) as runner:
            runner.run(COMMANDS[args.command](args))
    except CliError as exc:
        print(f"alkpubsub {args.command}: error: {exc}", file=sys.stderr)
        sys.exit(exc.code)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(0)


if __name__ == "__main__":
    main()
