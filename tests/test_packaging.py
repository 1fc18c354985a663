"""What users install: the wheel and the sdist hold every file they need.

``.ci/run`` builds the distributions once (``python -m build``, as a release is built) and
passes their paths in ``ALKPUBSUB_WHEEL`` and ``ALKPUBSUB_SDIST``. Without those variables
this module builds both itself into a temporary directory, without build isolation so that
no network is needed (the build requirements are in the ``test`` extra).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import alkpubsub

# Files every wheel must contain. "{dist_info}" is the wheel's .dist-info directory.
# Add package data here when it is added to setup.cfg (e.g. "alkpubsub/static/alkpubsub.js").
EXPECTED_WHEEL_FILES = (
    "alkpubsub/py.typed",
    "alkpubsub/static/alkpubsub.js",
    "alkpubsub/static/alkpubsub.d.ts",
    "{dist_info}/licenses/LICENSE-MIT",
    "{dist_info}/licenses/LICENSE-APACHE",
)

# Files every sdist must contain, relative to its top directory.
EXPECTED_SDIST_FILES = (
    "LICENSE-MIT",
    "LICENSE-APACHE",
    "README.md",
    "CHANGELOG.md",
    "CONTRIBUTING.md",
    "SECURITY.md",
    "pyproject.toml",
    "setup.cfg",
    "alkpubsub/py.typed",
    "tests/conftest.py",
    "tools/loopback-only",
)

SOURCE_ROOT = Path(__file__).resolve().parents[1]
BUILD_TIMEOUT = 300.0


def build_distributions(outdir: Path) -> dict[str, Path]:
    # Without --sdist/--wheel, build makes the sdist and then the wheel from it, as pip
    # does for users who install from the sdist.
    result = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(outdir), SOURCE_ROOT],
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = outdir.glob("alkpubsub-*.whl")
    (sdist,) = outdir.glob("alkpubsub-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


@pytest.fixture(scope="module")
def distributions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"wheel": path, "sdist": path}: the ones .ci/run built, or freshly built ones."""
    given = {kind: os.environ.get(f"ALKPUBSUB_{kind.upper()}", "") for kind in ("wheel", "sdist")}
    if all(given.values()):
        return {kind: Path(path) for kind, path in given.items()}
    built = build_distributions(tmp_path_factory.mktemp("dist"))
    return {kind: Path(path) if path else built[kind] for kind, path in given.items()}


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def sdist_names(sdist: Path) -> set[str]:
    with tarfile.open(sdist) as archive:
        names = [member.name for member in archive.getmembers() if member.isfile()]
    # Every member sits under "<name>-<version>/".
    return {name.partition("/")[2] for name in names}


def test_wheel_holds_every_expected_file(distributions: dict[str, Path]) -> None:
    wheel = distributions["wheel"]
    dist_info = f"alkpubsub-{alkpubsub.__version__}.dist-info"
    expected = {name.format(dist_info=dist_info) for name in EXPECTED_WHEEL_FILES}
    missing = expected - wheel_names(wheel)
    assert not missing, f"{wheel.name} lacks {sorted(missing)}"


def test_wheel_holds_every_file_of_the_package(distributions: dict[str, Path]) -> None:
    """A module or data file under alkpubsub/ that setup.cfg forgets would only fail
    for users, never for tests run from the source tree."""
    package = SOURCE_ROOT / "alkpubsub"
    in_source = {
        path.relative_to(SOURCE_ROOT).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    missing = in_source - wheel_names(distributions["wheel"])
    assert not missing, f"the wheel lacks {sorted(missing)}"


def test_wheel_carries_the_version(distributions: dict[str, Path]) -> None:
    name, version, *_ = distributions["wheel"].name.split("-")
    assert (name, version) == ("alkpubsub", alkpubsub.__version__)


def test_sdist_holds_every_expected_file(distributions: dict[str, Path]) -> None:
    sdist = distributions["sdist"]
    assert sdist.name == f"alkpubsub-{alkpubsub.__version__}.tar.gz"
    missing = set(EXPECTED_SDIST_FILES) - sdist_names(sdist)
    assert not missing, f"{sdist.name} lacks {sorted(missing)}"


def test_license_files_are_the_repository_ones(distributions: dict[str, Path]) -> None:
    dist_info = f"alkpubsub-{alkpubsub.__version__}.dist-info"
    with zipfile.ZipFile(distributions["wheel"]) as archive:
        for license_file in ("LICENSE-MIT", "LICENSE-APACHE"):
            shipped = archive.read(f"{dist_info}/licenses/{license_file}")
            assert shipped == (SOURCE_ROOT / license_file).read_bytes()
