"""Health and metrics of a hub, over plain HTTP (opt-in).

``render_metrics(hub)`` is the Prometheus text exposition format (version
0.0.4) of a hub's state and counters, with no dependency; ``health(hub)`` is
an HTTP status and body for a load balancer's health check. Both work on any
``HubTarget``, so an application that mounts the hub in its own web framework
can serve them from its own routes. ``WebSocketHub(health_path="/healthz",
metrics_path="/metrics")`` (``alkpubsub hub --metrics``) serves them from the
hub's own WebSocket port through ``websockets_http_handler``.

The endpoints answer anyone who can reach the port: bind the hub to a private
address or put them behind the proxy's access rules.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from . import __version__

if TYPE_CHECKING:
    from websockets.asyncio.server import ServerConnection
    from websockets.http11 import Request, Response

    from .transports.bridge import BridgeStats
    from .transports.hub import HubTarget

__all__ = [
    "METRICS_CONTENT_TYPE",
    "HttpHandler",
    "health",
    "render_metrics",
    "snapshot",
    "websockets_http_handler",
]

METRICS_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
PREFIX: Final = "alkpubsub_hub_"

#: HubStats fields, by name: (metric name without prefix, help). Fields added
#: to HubStats later are exported too, as ``alkpubsub_hub_<field>_total``.
COUNTERS: Final = {
    "connections": ("connections_accepted_total", "Connections accepted since the hub started."),
    "received_frames": ("received_frames_total", "Frames received from spokes."),
    "relayed_events": ("relayed_events_total", "Data envelopes from spokes relayed (H2)."),
    "invalid_frames": ("invalid_frames_total", "Received frames that were not envelopes (B10)."),
    "invalid_control": ("invalid_control_frames_total", "Malformed control frames (C1)."),
    "unknown_control": ("unknown_control_frames_total", "Unknown control frame types (C2)."),
    "refused": ("refused_requests_total", "Subscribe/publish requests refused (B12, topic cap)."),
    "backpressure_disconnects": (
        "backpressure_disconnects_total",
        "Connections cut off as slow consumers (B8).",
    ),
}

HttpHandler = Callable[["ServerConnection", "Request"], "Response | None"]


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self,
        name: str,
        kind: str,
        help_text: str,
        samples: list[tuple[dict[str, str], float]],
    ) -> None:
        self.lines.append(f"# HELP {PREFIX}{name} {help_text}")
        self.lines.append(f"# TYPE {PREFIX}{name} {kind}")
        for labels, value in samples:
            label_text = ",".join(f'{key}="{_escape(val)}"' for key, val in labels.items())
            braces = f"{{{label_text}}}" if label_text else ""
            number = int(value) if float(value).is_integer() else value
            self.lines.append(f"{PREFIX}{name}{braces} {number}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render_metrics(hub: HubTarget) -> str:
    """The hub's gauges and counters in the Prometheus text format."""
    out = _Exposition()
    router = hub.router
    out.metric("info", "gauge", "alkpubsub version.", [({"version": __version__}, 1)])
    out.metric("up", "gauge", "1 while the hub serves, 0 once it is closing.", [({}, _up(hub))])
    by_transport = Counter(conn.peer.transport for conn in router.connections.values())
    out.metric(
        "connections",
        "gauge",
        "Connections served now, by transport.",
        [({"transport": name}, count) for name, count in sorted(by_transport.items())] or [({}, 0)],
    )
    out.metric("topics", "gauge", "Topics with at least one subscribed connection.", [
        ({}, len(router.subscriptions))
    ])  # fmt: skip
    out.metric("subscriptions", "gauge", "Subscriptions (connection, topic) in effect.", [
        ({}, sum(len(subscribers) for subscribers in router.subscriptions.values()))
    ])  # fmt: skip
    out.metric("buffered_bytes", "gauge", "Bytes queued for all connections (B8 counts them).", [
        ({}, sum(conn.buffered_bytes for conn in router.connections.values()))
    ])  # fmt: skip
    out.metric("listener_errors_total", "counter", "Hub-local listeners that raised (B9).", [
        ({}, hub.listener_errors)
    ])  # fmt: skip
    refused_peers = getattr(hub, "refused_peers", None)
    if isinstance(refused_peers, int):
        out.metric("refused_peers_total", "counter", "Peers refused at connect.", [
            ({}, refused_peers)
        ])  # fmt: skip
    for field in dataclasses.fields(hub.stats):
        value = getattr(hub.stats, field.name)
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        name, help_text = COUNTERS.get(
            field.name, (f"{field.name.removesuffix('_total')}_total", f"HubStats.{field.name}.")
        )
        out.metric(name, "counter", help_text, [({}, value)])
    bridge = hub.bridge
    if bridge is not None:
        _bridge_metrics(out, bridge.stats)
    return out.text()


#: BridgeStats fields exported as gauges; the other fields are counters.
BRIDGE_GAUGES: Final = {
    "connected": "1 while the bridge's broker (Redis) is reachable, else 0.",
    "topics": "Topics the hub is subscribed to on the broker.",
}


def _bridge_metrics(out: _Exposition, stats: BridgeStats) -> None:
    """H6: a bridged hub's link to its broker, as ``alkpubsub_hub_bridge_*``."""
    for field in dataclasses.fields(stats):
        value = getattr(stats, field.name)
        if field.name in BRIDGE_GAUGES:
            out.metric(f"bridge_{field.name}", "gauge", BRIDGE_GAUGES[field.name], [
                ({}, int(value))
            ])  # fmt: skip
        elif isinstance(value, int) and not isinstance(value, bool):
            out.metric(f"bridge_{field.name}_total", "counter", f"BridgeStats.{field.name}.", [
                ({}, value)
            ])  # fmt: skip


def snapshot(hub: HubTarget) -> dict[str, int]:
    """The hub's gauges and counters as one flat dict (for a status line):
    ``connections``, ``topics``, ``subscriptions``, ``buffered_bytes``,
    ``listener_errors``, then every counter of ``hub.stats`` by its field name
    (``connections`` there becomes ``accepted``)."""
    router = hub.router
    values = {
        "connections": len(router.connections),
        "topics": len(router.subscriptions),
        "subscriptions": sum(len(subscribers) for subscribers in router.subscriptions.values()),
        "buffered_bytes": sum(conn.buffered_bytes for conn in router.connections.values()),
        "listener_errors": hub.listener_errors,
    }
    for field in dataclasses.fields(hub.stats):
        value = getattr(hub.stats, field.name)
        if isinstance(value, int) and not isinstance(value, bool):
            values["accepted" if field.name == "connections" else field.name] = value
    return values


def _up(hub: HubTarget) -> int:
    return 0 if hub.closed else 1


def health(hub: HubTarget) -> tuple[int, str]:
    """``(200, "ok\\n")`` while the hub serves, ``(503, "closing\\n")`` once it is
    closing (so a load balancer stops sending it new connections)."""
    if hub.closed:
        return 503, "closing\n"
    return 200, "ok\n"


def websockets_http_handler(
    hub: HubTarget, *, health_path: str | None = None, metrics_path: str | None = None
) -> HttpHandler:
    """A handler for ``WebSocketAcceptor.http_handler``: answers ``GET`` on the
    two paths (query strings ignored) and lets every other request through to
    the WebSocket upgrade."""
    from urllib.parse import urlsplit

    def handle(connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if health_path is not None and path == health_path:
            status, body = health(hub)
            response = connection.respond(status, body)
        elif metrics_path is not None and path == metrics_path:
            response = connection.respond(200, render_metrics(hub))
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        else:
            return None
        response.headers["Cache-Control"] = "no-store"
        return response

    return handle
