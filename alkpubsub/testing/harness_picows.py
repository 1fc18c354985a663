"""Bus harnesses for the picows WebSocket backend (``alkpubsub[fast]``): the same
``ws-hub``/``ws-spoke`` with ``backend="picows"`` on the hub, the spokes, or
both (so each backend is also tested against the other one)."""

from __future__ import annotations

from typing import Any, ClassVar

from .harness import WebSocketBus

__all__ = ["PicowsBus", "PicowsHubBus", "PicowsSpokesBus"]


class PicowsBus(WebSocketBus):
    """A ``ws-hub`` and ``ws-spoke`` targets, all on picows. The stalled
    subscriber of B8 is a raw ``websockets`` client, whatever the hub runs on."""

    name = "ws-picows"
    hub_backend: ClassVar[str] = "picows"
    spoke_backend: ClassVar[str] = "picows"

    def make_hub(self, **options: Any) -> Any:
        options.setdefault("backend", self.hub_backend)
        return super().make_hub(**options)

    def make_spoke(self, hub: Any, **options: Any) -> Any:
        options.setdefault("backend", self.spoke_backend)
        return super().make_spoke(hub, **options)


class PicowsHubBus(PicowsBus):
    """A picows hub with ``websockets`` spokes."""

    name = "ws-picows-hub"
    spoke_backend = "websockets"


class PicowsSpokesBus(PicowsBus):
    """A ``websockets`` hub with picows spokes."""

    name = "ws-picows-spokes"
    hub_backend = "websockets"
