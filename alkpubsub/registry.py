"""Transport registry: names and URLs to unstarted targets (SPEC §6).

Transports are entry points in the group ``alkpubsub.transports``; a third-party
package adds one by declaring an entry point, nothing else. An entry point may
name the extra it needs (``ws-hub = pkg.mod:Cls [ws]``) so that a missing
dependency produces an error that says what to install.

URL schemes are declared by the transport classes themselves (as fsspec's
``protocol`` attribute): ``url_schemes = ("ws", "wss")`` and a ``from_url(url,
**options)`` classmethod. ``transport_from_url`` loads entry points until one
claims the scheme, those whose name starts with the scheme first, so that a
``ws://`` URL does not import every installed transport.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Protocol, Self, cast, overload
from urllib.parse import urlsplit

from .core.errors import MissingExtraError, UnknownTransportError
from .target import TypedEventTarget

if TYPE_CHECKING:  # for the overloads only: never import websockets or iroh at run time
    from .transports.iroh import IrohHub, IrohSpoke
    from .transports.memory import MemoryEventTarget
    from .transports.ws import WebSocketHub, WebSocketSpoke

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_URL",
    "Transport",
    "available_transports",
    "get_transport",
    "transport_from_config",
    "transport_from_env",
    "transport_from_url",
    "url_schemes",
]

ENTRY_POINT_GROUP: Final = "alkpubsub.transports"
ENV_URL: Final = "ALKPUBSUB_URL"


class Transport(TypedEventTarget, Protocol):
    """What the registry returns for a name or URL it cannot type more precisely:
    a target that is started by ``start()`` or ``async with``."""

    async def start(self) -> None: ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_transports() -> list[str]:
    """Names of every registered transport, installed extras or not."""
    return sorted(_entry_points())


def _load(name: str) -> Callable[..., TypedEventTarget]:
    eps = _entry_points()
    ep = eps.get(name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "none"
        raise UnknownTransportError(f"unknown transport {name!r}; known transports: {known}")
    return _load_entry_point(name, ep)


def _load_entry_point(name: str, ep: EntryPoint) -> Callable[..., TypedEventTarget]:
    try:
        factory = ep.load()
    except ImportError as exc:
        extras = getattr(ep, "extras", None) or []
        extra = extras[0] if extras else name.split("-")[0]
        raise MissingExtraError(
            f"transport {name!r} needs an optional dependency that is not installed "
            f"({exc.name or exc}): pip install 'alkpubsub[{extra}]'"
        ) from exc
    if not callable(factory):
        raise UnknownTransportError(f"entry point {name!r} does not name a callable: {ep.value}")
    return cast(Callable[..., TypedEventTarget], factory)


@overload
def get_transport(name: Literal["memory"], **options: Any) -> MemoryEventTarget: ...
@overload
def get_transport(name: Literal["ws-hub"], **options: Any) -> WebSocketHub: ...
@overload
def get_transport(name: Literal["ws-spoke"], **options: Any) -> WebSocketSpoke: ...
@overload
def get_transport(name: Literal["iroh-hub"], **options: Any) -> IrohHub: ...
@overload
def get_transport(name: Literal["iroh-spoke"], **options: Any) -> IrohSpoke: ...
@overload
def get_transport(name: str, **options: Any) -> Transport: ...


def get_transport(name: str, **options: Any) -> Transport:
    """An unstarted target of transport ``name``; start it with ``async with``.

    Our own transport names are typed by their class (``get_transport("ws-hub")``
    is a ``WebSocketHub``); other names give a ``Transport``.
    """
    return cast(Transport, _load(name)(**options))


def url_schemes(factory: object) -> tuple[str, ...]:
    """The URL schemes a transport class declares (``url_schemes``), lower-cased."""
    schemes = getattr(factory, "url_schemes", ())
    if isinstance(schemes, str):
        schemes = (schemes,)
    return tuple(str(scheme).lower() for scheme in schemes)


def _factory_for_scheme(scheme: str) -> Callable[..., TypedEventTarget]:
    eps = _entry_points()
    # Names starting with the scheme first (``ws`` -> ws-hub, ws-spoke), then the
    # rest alphabetically: cheap for the common case, complete for the rest.
    order = sorted(eps, key=lambda name: (not name.startswith(scheme), name))
    known: list[str] = []
    unavailable: list[str] = []
    for name in order:
        try:
            factory = _load_entry_point(name, eps[name])
        except MissingExtraError as exc:
            unavailable.append(f"{name} ({exc.__cause__ or exc})")
            continue
        schemes = url_schemes(factory)
        if scheme in schemes:
            return factory
        known.extend(f"{s}://" for s in schemes)
    message = f"no transport for URL scheme {scheme!r}; known: {', '.join(known) or 'none'}"
    if unavailable:
        message += f"; transports that could not be loaded: {'; '.join(unavailable)}"
    raise UnknownTransportError(message)


def transport_from_url(url: str, **options: Any) -> Transport:
    """``memory://``, ``ws://host:port/path``, ``iroh://<ticket>``, or any scheme a
    registered transport declares."""
    scheme, sep, _ = url.partition("://")
    if not sep:
        raise UnknownTransportError(f"not a transport URL: {url!r} (expected scheme://...)")
    urlsplit(url)  # raises ValueError on malformed URLs early
    factory = _factory_for_scheme(scheme.lower())
    from_url = getattr(factory, "from_url", None)
    if callable(from_url):
        return cast(Transport, from_url(url, **options))
    return cast(Transport, factory(url=url, **options))


def transport_from_config(config: Mapping[str, Any]) -> Transport:
    """``{"transport": "ws-spoke", "url": ...}`` or ``{"url": "ws://..."}``."""
    options = dict(config)
    name = options.pop("transport", None)
    if name is None:
        url = options.pop("url", None)
        if not isinstance(url, str):
            raise UnknownTransportError("config needs a 'transport' name or a 'url'")
        return transport_from_url(url, **options)
    if not isinstance(name, str):
        raise UnknownTransportError("config 'transport' must be a string")
    return get_transport(name, **options)


def transport_from_env(
    default: str = "memory://", environ: Mapping[str, str] | None = None
) -> Transport:
    """The transport named by ``$ALKPUBSUB_URL`` (or ``default``)."""
    env = os.environ if environ is None else environ
    return transport_from_url(env.get(ENV_URL) or default)
