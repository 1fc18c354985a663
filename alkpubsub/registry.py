"""Transport registry: names and URLs to unstarted targets (SPEC §6).

Transports are entry points in the group ``alkpubsub.transports``; a third-party
package adds one by declaring an entry point, nothing else. An entry point may
name the extra it needs (``ws-hub = pkg.mod:Cls [ws]``) so that a missing
dependency produces an error that says what to install.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Final
from urllib.parse import urlsplit

from .core.errors import MissingExtraError, UnknownTransportError
from .target import TypedEventTarget

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENV_URL",
    "available_transports",
    "get_transport",
    "transport_from_config",
    "transport_from_env",
    "transport_from_url",
]

ENTRY_POINT_GROUP: Final = "alkpubsub.transports"
ENV_URL: Final = "ALKPUBSUB_URL"

# URL scheme -> (transport name, the option that receives the URL or its remainder).
_SCHEMES: Final[dict[str, tuple[str, str | None]]] = {
    "memory": ("memory", None),
    "ws": ("ws-spoke", "url"),
    "wss": ("ws-spoke", "url"),
    "iroh": ("iroh-spoke", "hub"),
    "redis": ("redis", "url"),
    "rediss": ("redis", "url"),
}


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
    return factory  # type: ignore[no-any-return]


def get_transport(name: str, **options: Any) -> TypedEventTarget:
    """An unstarted target of transport ``name``; start it with ``async with``."""
    return _load(name)(**options)


def transport_from_url(url: str, **options: Any) -> TypedEventTarget:
    """``memory://``, ``ws://host:port/path``, ``iroh://<ticket>``, ``redis://…``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise UnknownTransportError(f"not a transport URL: {url!r} (expected scheme://...)")
    mapping = _SCHEMES.get(scheme.lower())
    if mapping is None:
        known = ", ".join(f"{s}://" for s in _SCHEMES)
        raise UnknownTransportError(f"no transport for URL scheme {scheme!r}; known: {known}")
    name, option = mapping
    if option == "hub":
        options.setdefault("hub", rest)
    elif option == "url":
        urlsplit(url)  # raises ValueError on malformed URLs early
        options.setdefault("url", url)
    return get_transport(name, **options)


def transport_from_config(config: Mapping[str, Any]) -> TypedEventTarget:
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
) -> TypedEventTarget:
    """The transport named by ``$ALKPUBSUB_URL`` (or ``default``)."""
    env = os.environ if environ is None else environ
    return transport_from_url(env.get(ENV_URL) or default)
