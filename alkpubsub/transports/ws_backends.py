"""Which library a ``ws-hub``'s own server and a ``ws-spoke`` run on.

``websockets`` is the dependency of ``alkpubsub[ws]``; ``picows`` (a Cython
WebSocket library) comes with ``alkpubsub[fast]``. The default, ``"auto"``,
picks picows when it is installed, as uvicorn picks uvloop and httptools when
``uvicorn[standard]`` brought them; ``$ALKPUBSUB_WS_BACKEND`` (``picows`` or
``websockets``) overrides ``"auto"`` without a code change. An explicit
``backend=`` always wins. Connections mounted in Starlette/FastAPI or aiohttp
are served through those frameworks' own sockets whatever the backend.
"""

from __future__ import annotations

import os
from importlib.util import find_spec
from typing import Final, Literal, get_args

from ..core.errors import MissingExtraError

__all__ = ["ENV_WS_BACKEND", "WS_BACKENDS", "WsBackend", "resolve_ws_backend"]

WsBackend = Literal["auto", "picows", "websockets"]
WS_BACKENDS: Final[tuple[str, ...]] = get_args(WsBackend)

#: Overrides ``backend="auto"`` (the default) everywhere in the process.
ENV_WS_BACKEND: Final = "ALKPUBSUB_WS_BACKEND"


def picows_installed() -> bool:
    return find_spec("picows") is not None


def resolve_ws_backend(backend: str = "auto") -> Literal["picows", "websockets"]:
    """The backend a hub or spoke created with ``backend`` runs on."""
    if backend not in WS_BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(WS_BACKENDS)}, not {backend!r}")
    if backend == "auto":
        configured = os.environ.get(ENV_WS_BACKEND, "").strip().lower() or "auto"
        if configured not in WS_BACKENDS:
            raise ValueError(
                f"${ENV_WS_BACKEND} must be one of {', '.join(WS_BACKENDS)}, not {configured!r}"
            )
        if configured == "auto":
            return "picows" if picows_installed() else "websockets"
        backend = configured
    if backend == "picows":
        if not picows_installed():
            raise MissingExtraError(
                "the picows WebSocket backend needs picows: pip install 'alkpubsub[fast]'"
            )
        return "picows"
    return "websockets"
