"""Micro-benchmark of local listeners: dispatch, and releasing subscriptions.

    python benchmarks/bench_listeners.py                  # this checkout
    python benchmarks/bench_listeners.py --compare REF    # and alkpubsub at git REF

Measures on the in-process target (no network, so only the listener registry,
the target and ``subscribe()`` are timed):

dispatch  events/s dispatched to a topic with 1, 10 and 100 listeners (cheap
          listeners; the event is built once), best of ``--repeat`` runs.
release   seconds to release N subscriptions of one topic (``aclose()`` each),
          N = 4,000 and 16,000, best of ``--repeat`` runs, and their ratio
          (4 when releasing is linear, 16 when it is quadratic).

Times are CPU time of this process (``time.process_time``), the best of the
runs: on a shared machine that is steadier than wall-clock time.

``--compare REF`` exports the package at REF (``git archive``) to a temporary
directory and measures both versions in subprocesses that alternate
(``--rounds``), so that both see the same machine load, then prints the best of
each side by side. It takes a few minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DISPATCH_EVENTS = 100_000
LISTENER_COUNTS = (1, 10, 100)
RELEASE_SIZES = (4_000, 16_000)


def measure_dispatch(listeners: int, repeat: int) -> float:
    from alkpubsub import MemoryEventTarget, make_event

    target = MemoryEventTarget()
    received = [0]

    def make_listener() -> Any:
        def listener(event: Any) -> None:
            received[0] += 1

        return listener

    for _ in range(listeners):
        target.add_event_listener("bench:1", make_listener())
    event = make_event("bench", "1", {"n": 1})
    events = DISPATCH_EVENTS // listeners
    best = float("inf")
    for _ in range(repeat):
        started = time.process_time()
        for _ in range(events):
            target.dispatch_event(event)
        best = min(best, time.process_time() - started)
    return events / best


async def measure_release(count: int, repeat: int) -> float:
    from alkpubsub import MemoryEventTarget, create_pubsub

    best = float("inf")
    for round_ in range(repeat):
        target = MemoryEventTarget()
        pubsub = create_pubsub(target)
        subscriptions = [pubsub.subscribe("bench", str(round_)) for _ in range(count)]
        started = time.process_time()
        for subscription in subscriptions:
            await subscription.aclose()
        best = min(best, time.process_time() - started)
        assert target.listener_count(f"bench:{round_}") == 0
        await target.aclose()
    return best


def run_here(repeat: int) -> dict[str, Any]:
    import alkpubsub

    results: dict[str, Any] = {"package": str(Path(alkpubsub.__file__).parent)}
    for listeners in LISTENER_COUNTS:
        results[f"dispatch_{listeners}_events_per_s"] = round(measure_dispatch(listeners, repeat))
    for count in RELEASE_SIZES:
        results[f"release_{count}_s"] = round(asyncio.run(measure_release(count, repeat)), 4)
    small, large = RELEASE_SIZES
    ratio = results[f"release_{large}_s"] / results[f"release_{small}_s"]
    results["release_ratio"] = round(ratio, 1)
    return results


def _measure_in_subprocess(path: str | None, repeat: int) -> dict[str, Any]:
    env = dict(os.environ)
    if path is not None:
        env["PYTHONPATH"] = path
    output = subprocess.run(
        [sys.executable, __file__, "--repeat", str(repeat), "--json-only"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    results: dict[str, Any] = json.loads(output)
    return results


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(runs[0])
    for run in runs[1:]:
        for key, value in run.items():
            if key.startswith("dispatch_"):
                best[key] = max(best[key], value)
            elif key.startswith("release_") and key != "release_ratio":
                best[key] = min(best[key], value)
    small, large = RELEASE_SIZES
    best["release_ratio"] = round(best[f"release_{large}_s"] / best[f"release_{small}_s"], 1)
    return best


def compare(ref: str, repeat: int, rounds: int) -> list[dict[str, Any]]:
    """Both versions in alternating subprocesses, so that both see the same
    machine load; the best of all rounds of each."""
    with tempfile.TemporaryDirectory(prefix="alkpubsub-bench-") as directory:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", ref, "alkpubsub"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", directory], input=archive, check=True)
        runs: dict[str | None, list[dict[str, Any]]] = {directory: [], None: []}
        for _ in range(rounds):
            for path in runs:
                runs[path].append(_measure_in_subprocess(path, repeat))
    before, after = _best(runs[directory]), _best(runs[None])
    before["package"] = f"git {ref}"
    return [before, after]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=4, help="alternations with --compare")
    parser.add_argument("--compare", metavar="REF", help="also measure alkpubsub at git REF")
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.json_only:
        print(json.dumps(run_here(args.repeat)))
        return
    columns = (
        compare(args.compare, args.repeat, args.rounds) if args.compare else [run_here(args.repeat)]
    )
    keys = [key for key in columns[-1] if key != "package"]
    width = max(len(key) for key in keys)
    print(f"{'':{width}}  " + "  ".join(f"{column['package'][-30:]:>30}" for column in columns))
    for key in keys:
        print(f"{key:{width}}  " + "  ".join(f"{column.get(key, '-')!s:>30}" for column in columns))


if __name__ == "__main__":
    main()
