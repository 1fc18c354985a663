"""examples/worker_progress.py runs: a worker process streams progress events
to the asyncio program, which prints a progress bar and the result."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from alkpubsub.testing import within

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "worker_progress.py"


async def test_worker_progress_example() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "1000000",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await within(process.communicate(), 120)
    assert process.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    bars = [line for line in lines if line.startswith("[")]
    # Not a terminal: one line per 10%, from the first chunk to the end.
    assert [line.split("]")[1].split("%")[0].strip() for line in bars] == [
        "5",
        *(str(p) for p in range(10, 101, 10)),
    ]
    assert bars[-1].startswith("[" + "#" * 30 + "] 100%  1,000,000/1,000,000")
    assert lines[-1].startswith("78,498 primes below 1,000,000 in ")
    assert "the main loop ticked" in lines[-1]
