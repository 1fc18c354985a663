"""The public extension API for transports: everything a transport author needs.

A spoke transport subclasses ``SpokeTarget`` and implements ``open_link()``
returning a ``Link``; a hub transport provides an ``Acceptor`` that turns each
accepted connection into a ``Link`` and calls ``HubTarget.serve_link``. See
``docs/transports.md`` for a complete example.
"""

from __future__ import annotations

from ..core.close import NORMAL_CLOSE_CODES, CloseCode
from ..core.codec import FrameDecoder, pack_frames
from ..core.errors import (
    ConnectionRefusedByHubError,
    FramingError,
    LinkClosedError,
    TargetClosedError,
)
from ..core.forwarder import SpokeState
from ..core.router import Peer
from .hub import Acceptor, Authorize, HubTarget
from .link import LINK_ERRORS, WRITE_CHUNK_BYTES, Link, SyncWritableLink
from .spoke import SpokeTarget

__all__ = [
    "LINK_ERRORS",
    "NORMAL_CLOSE_CODES",
    "WRITE_CHUNK_BYTES",
    "Acceptor",
    "Authorize",
    "CloseCode",
    "ConnectionRefusedByHubError",
    "FrameDecoder",
    "FramingError",
    "HubTarget",
    "Link",
    "LinkClosedError",
    "Peer",
    "SpokeState",
    "SpokeTarget",
    "SyncWritableLink",
    "TargetClosedError",
    "pack_frames",
]
