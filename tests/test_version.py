"""One version, written in alkpubsub/_version.py, seen the same everywhere."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import alkpubsub

TIMEOUT = 30.0


def test_installed_metadata_carries_the_version() -> None:
    assert version("alkpubsub") == alkpubsub.__version__, (
        "the installed metadata is stale: reinstall (pip install -e '.[all,test]')"
    )


def test_cli_prints_the_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alkpubsub", "--version"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert (result.returncode, result.stdout, result.stderr) == (
        0,
        f"alkpubsub {alkpubsub.__version__}\n",
        "",
    )
