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

Resuming: ``resume_point`` turns what a script's --resume asks for into the checkpoint to continue
(a ResumePoint, read once), and ``check_resume_config`` / ``check_resume_vocab`` say whether this
run's config and data may continue it (the model's shape, the optimizer and the vocabulary may not
change; anything else may, and is reported).
"""

from __future__ import annotations

import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import Config, ConfigError, from_dict
from .files import write_atomic
from .jobs import vocab_from_state
from .nn import make_model

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


# ----------------------------------------------------------------------------- resuming

def resume_point(resume: bool | str | Path | None, out_dir: str | Path | None) -> ResumePoint | None:
    """The checkpoint that a script's --resume asks for, read once (see load_latest): None for no resume
    (False or None), out_dir's (True: continue the run there), or that of a checkpoint file or run
    directory (a path: continue it, writing to the run's out_dir)."""
    if resume is True:
        return load_latest(out_dir)
    return load_latest(resume) if resume else None


# model settings that may change on resume: dropout is not part of the weights' shape, and the
# vocabulary (vocab_size) is compared separately, against the data (check_resume_vocab)
_RESUMABLE_MODEL_KEYS = ("model.dropout", "model.vocab_size")
# settings whose state lives in the checkpoint in a form another value cannot read
_FIXED_KEYS = ("train.optimizer", "data.tokenizer")
# what a checkpoint written before a setting existed did, where that differs from today's default
_BEFORE_THE_SETTING = {("train", "optimizer"): "adamw"}


def check_resume_config(saved: dict, cfg: Config) -> list[tuple[str, object, object]]:
    """Refuse a model whose shape differs from the checkpoint's (or another optimizer); return the other
    settings that changed, as (key, checkpoint's value, config's value). Settings added since the
    checkpoint was written count as what the code did then (a checkpoint without optimizer was trained
    with AdamW)."""
    changes = _changed(_complete(saved), cfg.to_dict())
    shape = [(k, a, b) for k, a, b in changes
             if (k.startswith("model.") and k not in _RESUMABLE_MODEL_KEYS) or k in _FIXED_KEYS]
    if shape:
        lines = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, a, b in shape)
        raise ConfigError(f"cannot resume: the model differs from the checkpoint's ({lines})")
    return [(k, a, b) for k, a, b in changes if k != "model.vocab_size"]


def check_resume_vocab(saved: dict, vocab_state: dict) -> None:
    """Refuse data whose vocabulary (the job's tokenizer or task state) differs from the checkpoint's:
    the weights are indexed by it."""
    if saved["tokenizer"] != vocab_state:
        raise ConfigError(f"cannot resume: the vocabulary differs from the checkpoint's (checkpoint "
                          f"{_describe_vocab(saved['tokenizer'])}, this run {_describe_vocab(vocab_state)})")


def _complete(saved: dict) -> dict:
    """A saved config with the settings added since it was written: the value the code then had (the
    default, or _BEFORE_THE_SETTING)."""
    full = {section: dict(values) for section, values in Config().to_dict().items()}
    for (section, key), value in _BEFORE_THE_SETTING.items():
        full[section][key] = value
    for section, values in saved.items():
        full.setdefault(section, {}).update(values)
    return full


def _changed(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) of every setting of new that differs from old."""
    out = []
    for key in new:
        if isinstance(new[key], dict):
            out += _changed(old.get(key, {}), new[key], f"{prefix}{key}.")
        elif old.get(key) != new[key]:
            out.append((f"{prefix}{key}", old.get(key), new[key]))
    return out


def _describe_vocab(state: dict) -> str:
    """A vocabulary's state in a few words, e.g. "65 characters"."""
    if state.get("kind") == "char":
        return f"{len(state['chars'])} characters"
    if state.get("kind") == "bpe":
        return f"a byte-level BPE of {256 + len(state['merges'])} tokens"
    if state.get("kind") == "tiktoken":
        return f"tiktoken's {state['name']}"
    return ", ".join(f"{k} {v}" for k, v in state.items() if k != "kind")


# ----------------------------------------------------------------------------- state outside the model

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
