"""Helpers shared by the benchmark driver, its client process and the baseline hubs.

Also a launcher, so every Python hub runs on the event loop the benchmark chose:

    python benchmarks/_benchutil.py LOOP -m alkpubsub hub --port 0
    python benchmarks/_benchutil.py LOOP benchmarks/baseline_ws_hub.py 0
"""

from __future__ import annotations

import asyncio
import runpy
import socket
import sys
from collections.abc import Callable

LOOPS = ("asyncio", "uvloop")

IROH_OUTSIDE_LOOPBACK = (
    "refusing to bind iroh endpoints: this network namespace has interfaces other than "
    "loopback (iroh probes the LAN); run the benchmark under tools/loopback-only"
)


def loopback_only() -> bool:
    """True inside a network namespace whose only interface is loopback."""
    return [name for _, name in socket.if_nameindex()] == ["lo"]


def require_loopback_only() -> None:
    if not loopback_only():
        raise SystemExit(IROH_OUTSIDE_LOOPBACK)


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def install_loop(name: str) -> None:
    """Make ``asyncio.run`` in this process use the named loop."""
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def launch(argv: list[str]) -> None:
    """``LOOP -m MODULE ARGS...`` or ``LOOP SCRIPT ARGS...``: run it on that loop."""
    loop, *rest = argv
    install_loop(loop)
    if rest[0] == "-m":
        sys.argv = [rest[1], *rest[2:]]
        runpy.run_module(rest[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = rest
        runpy.run_path(rest[0], run_name="__main__")


if __name__ == "__main__":
    launch(sys.argv[1:])
