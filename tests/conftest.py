import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Under pytest-xdist (pytest.ini runs one worker per core), each worker and every program it starts computes
# on one thread: two workers of two threads each on two cores would oversubscribe them, and the tests' small
# models gain nothing from a second thread. Set before torch is imported, so it holds for this process too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

# Tiny Shakespeare, where the workspace has a copy beside the clone; tests that need it are skipped
# elsewhere (no test depends on it to pass). Every other test makes its own data.
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def offline_text() -> str:
    """The corpus that needs no download: CPython's own reference documentation (pydoc_data)."""
    from lm.data.corpus import _offline_text

    return _offline_text()


@pytest.fixture
def shakespeare() -> Path:
    """The workspace's Tiny Shakespeare copy; the test is skipped on a clone without it."""
    if not SHAKESPEARE.is_file():
        pytest.skip(f"Tiny Shakespeare is not beside this clone ({SHAKESPEARE})")
    return SHAKESPEARE


@pytest.fixture(scope="module")
def one_thread():
    """For modules of tiny models: one intra-op thread is fastest, and several stall badly on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    """A 20,000-character slice of the offline corpus (Python's docs), written to a temporary file."""
    path = tmp_path / "small.txt"
    path.write_text(offline_text()[:20_000], encoding="utf-8")
    return path


class RunsCode:
    """An object whose unpickling runs a shell command that creates ``marker``: a malicious payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))
