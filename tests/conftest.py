import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


@pytest.fixture
def shakespeare() -> Path:
    """The shared Tiny Shakespeare corpus (integration tests train on it)."""
    assert SHAKESPEARE.is_file(), f"the shared corpus is missing: {SHAKESPEARE}"
    return SHAKESPEARE


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """A 20,000-character slice of Tiny Shakespeare, written to a temporary file."""
    assert SHAKESPEARE.is_file(), f"the shared corpus is missing: {SHAKESPEARE}"
    path = tmp_path / "small.txt"
    path.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


class RunsCode:
    """An object whose unpickling runs a shell command that creates ``marker``: a malicious payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
