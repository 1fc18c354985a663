"""The code users copy: every Python sample of the README and docs, and the
samples in tests/typing/samples/, passes ``mypy --strict``; samples that are
whole programs (they call ``asyncio.run``) also run as written.

A sample is a fenced ``python`` block; one preceded by a line
``<!-- fragment: ... -->`` is a piece of a larger program and is not checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SAMPLES_DIR = Path(__file__).parent / "samples"
FENCE = re.compile(
    r"(?P<fragment><!-- fragment:[^\n]*-->\n)?```python\n(?P<code>.*?)^```", re.S | re.M
)
MYPY_TIMEOUT = 300
RUN_TIMEOUT = 60


@dataclass(frozen=True)
class Sample:
    document: Path
    line: int
    code: str

    @property
    def name(self) -> str:
        stem = re.sub(r"\W", "_", self.document.stem.lower())
        return f"{stem}_line_{self.line}"

    @property
    def is_program(self) -> bool:
        return "asyncio.run(" in self.code

    @property
    def needs_loopback_only(self) -> bool:
        return "iroh" in self.code


def document_samples() -> list[Sample]:
    samples = []
    for document in DOCUMENTS:
        text = document.read_text()
        for match in FENCE.finditer(text):
            if match.group("fragment"):
                continue
            line = text.count("\n", 0, match.start("code")) + 1
            samples.append(Sample(document, line, match.group("code")))
    return samples


def test_the_readme_and_docs_have_samples() -> None:
    names = {sample.document.name for sample in document_samples()}
    assert {"README.md", "iroh.md", "websocket.md"} <= names


def test_samples_pass_mypy_strict(tmp_path: Path) -> None:
    files = sorted(SAMPLES_DIR.glob("*.py"))
    for sample in document_samples():
        path = tmp_path / f"{sample.name}.py"
        path.write_text(sample.code)
        files.append(path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--python-version", "3.11",
         "--cache-dir", str(ROOT / ".mypy_cache" / "samples"), *map(str, files)],
        cwd=ROOT, capture_output=True, text=True, timeout=MYPY_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


PROGRAMS = [sample for sample in document_samples() if sample.is_program]


@pytest.mark.parametrize("sample", PROGRAMS, ids=[sample.name for sample in PROGRAMS])
def test_program_samples_run_as_written(
    sample: Sample, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if sample.needs_loopback_only:
        request.getfixturevalue("loopback_only")
    path = tmp_path / f"{sample.name}.py"
    path.write_text(sample.code)
    result = subprocess.run(
        [sys.executable, str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, f"{sample.document.name}:{sample.line}\n{result.stderr}"
