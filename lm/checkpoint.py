"""Checkpoints: one file with everything needed to resume a run or to sample from it.

Contents (tensors and plain Python values only, so it loads with weights_only=True):
    format_version  int
    model           state dict of the unwrapped model
    optimizer       optimizer state dict (absent in weights-only exports)
    step            optimizer steps completed
    rng             {"torch": ByteTensor, "cuda": [ByteTensor, ...]}
    config          the full resolved config, Config.to_dict()
    tokenizer       tokenizer state, e.g. {"kind": "char", "chars": "..."}
    best_val_loss   float or None
    run_id          the run's identity (see lm.rundir)
    window          running sums of the metrics line in progress (exact metrics across a resume)
Writes go to a temporary file that is then renamed over the target, so a crash
mid-save leaves the previous checkpoint whole.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .files import write_atomic

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


class _RecordingWriter(io.RawIOBase):
    """A file wrapper that remembers the OSError of a failed write: torch.save reports such a failure
    as an opaque RuntimeError, and this keeps the real cause (disk full, file too large, ...)."""

    def __init__(self, f):
        self.f, self.error = f, None

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise


def save(path: str | Path, payload: dict) -> None:
    """Atomically write payload to path (temporary file, fsync, rename).

    A failed write raises OSError (with the system's reason, e.g. ENOSPC) and leaves any previous
    file at path as it was.
    """

    def write(f) -> None:
        writer = _RecordingWriter(f)
        try:
            torch.save({"format_version": FORMAT_VERSION, **payload}, writer)
        except RuntimeError as e:
            if writer.error is None:
                raise
            raise OSError(writer.error.errno, writer.error.strerror, f.name) from e

    write_atomic(path, write)


def load(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint safely (weights_only=True: no code in the file can run).

    Raises CheckpointError for a missing, truncated, corrupt, foreign or unsafe file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist" if not path.exists()
                              else f"checkpoint {str(path)!r} is not a file")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} was refused: it holds objects other than tensors and plain values, "
            f"which could run code when loaded ({str(e).splitlines()[0][:200]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is truncated or corrupt and cannot be read ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise CheckpointError(f"checkpoint {str(path)!r} is not an lm checkpoint (no model or config inside)")
    version = ckpt.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {version!r}; "
                              f"this version of lm reads version {FORMAT_VERSION}")
    return ckpt


@dataclass
class ResumePoint:
    """The checkpoint a run resumes from, read once."""

    path: Path  # the file used
    ckpt: dict  # its contents
    problems: list[str] = field(default_factory=list)  # damaged checkpoints passed over, as messages
    source: Path | None = None  # what was asked for: the file, or the run directory it was chosen in
    stamp: tuple = ()  # (inode, mtime, size) of path when it was read

    def is_current(self) -> bool:
        """True while path is still the file that was read (no process has replaced it since)."""
        return _stamp(self.path) == self.stamp


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return ()
    return st.st_ino, st.st_mtime_ns, st.st_size


def load_latest(path: str | Path) -> ResumePoint:
    """The checkpoint to resume from, read once: ``path`` itself if it is a file; for a run directory,
    last.pt (the newest: it is written at every evaluation and on every stop), or best.pt when
    last.pt is missing, truncated or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint to resume from: {str(path)!r} does not exist")
    if not path.is_dir():
        stamp = _stamp(path)
        return ResumePoint(path, load(path), [], path, stamp)
    problems = []
    for name in ("last.pt", "best.pt"):
        candidate = path / name
        if candidate.exists():
            stamp = _stamp(candidate)
            try:
                return ResumePoint(candidate, load(candidate), problems, path, stamp)
            except CheckpointError as e:
                problems.append(str(e))
    detail = "; ".join(problems) if problems else "neither last.pt nor best.pt exists"
    raise CheckpointError(f"no checkpoint to resume from in {str(path)!r}: {detail}")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model(path: str | Path, device="cpu"):
    """Rebuild the model and its vocabulary from a checkpoint alone: returns (model, vocab, config).

    vocab is the tokenizer (task lm: lm.data.tokenizer.tokenizer_from_state) or the Task (seq2seq tasks).
    """
    from .config import from_dict
    from .jobs import make_model, vocab_from_state

    ckpt = load(path, map_location=device)
    cfg = from_dict(ckpt["config"])
    model = make_model(cfg)
    load_weights(model, ckpt, path)
    model.to(device).eval()
    return model, vocab_from_state(ckpt["tokenizer"]), cfg


def load_weights(model, ckpt: dict, path) -> None:
    """Copy a checkpoint's weights into a model built from its config; CheckpointError if they do not fit."""
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {str(path)!r} holds weights that do not fit the model its config "
                              f"describes (written by another version of lm?): {str(e).splitlines()[0][:300]}") from None
