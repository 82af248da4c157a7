"""Several runs side by side: each one's metrics, labelled by the settings that tell the runs apart. And
one run over training: its checkpoints, each with its step and its evaluation.

    load_runs            (label, metrics records) of several run directories
    checkpoint_files     the checkpoint files that a list of files and directories names
    load_snapshot        one checkpoint's model, vocabulary, config, step and evaluation
    check_same_model     refuse checkpoints of two different models
    step_label           "step 300 · exact 87.0%", "step 300 · val loss 1.2345" or "step 300"
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from .. import checkpoint as ckpt_io
from ..checkpoint import CheckpointError
from ..config import Config, from_dict
from ..jobs import vocab_from_state
from ..nn import make_model
from ..rundir import read_metrics

MAX_SETTINGS = 4  # a label names at most this many differing settings
# settings that change how a run is carried out, not what it learns: never a label
NOT_LABELS = {"out_dir", "device", "dtype", "compile", "num_workers", "vocab_size", "log_interval", "eval_interval", "eval_iters"}


class RunError(ValueError):
    """A run directory that cannot be compared (no metrics yet)."""


def run_config(run_dir: Path) -> dict | None:
    """The run's config (as saved in its checkpoints), flattened to {setting: value} with the model's
    settings first (keys are unique across sections, so the section is dropped); None when no
    checkpoint can be read yet (a run before its first evaluation)."""
    for name in ("last.pt", "best.pt"):
        try:
            saved = ckpt_io.load(run_dir / name)["config"]
        except CheckpointError:
            continue
        sections = [saved["model"]] + [s for key, s in saved.items() if key != "model"]
        return {key: value for section in sections for key, value in section.items()}
    return None


def run_records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    try:
        records = [r for _, r in read_metrics(path)]
    except OSError as e:
        raise RunError(f"{str(run_dir)!r} is not a run directory: cannot read {str(path)!r} "
                       f"({e.strerror or e})") from None
    if not records:
        raise RunError(f"{str(path)!r} holds no metrics yet")
    return records


def labels(run_dirs: list[Path], configs: list[dict | None]) -> list[str]:
    """'DIR: setting=value, ...' with the settings whose values differ between the runs, the model's
    first (runtime settings such as device never count); a run without a readable config is labelled
    by its directory alone."""
    known = [c for c in configs if c is not None]
    keys = [k for k in (known[0] if known else {})
            if k not in NOT_LABELS and len({repr(c.get(k)) for c in known}) > 1]
    out = []
    for run_dir, config in zip(run_dirs, configs):
        if config is None:
            out.append(f"{run_dir} (no checkpoint yet: settings unknown)")
            continue
        shown = [f"{k}={config.get(k)}" for k in keys[:MAX_SETTINGS]]
        more = f", +{len(keys) - MAX_SETTINGS} more" if len(keys) > MAX_SETTINGS else ""
        out.append(f"{run_dir}: {', '.join(shown)}{more}" if shown else str(run_dir))
    return out


def load_runs(run_dirs: list[str | Path]) -> list[tuple[str, list[dict]]]:
    """(label, metrics records) of each run directory, in the order given."""
    dirs = [Path(d) for d in run_dirs]
    records = [run_records(d) for d in dirs]
    configs = [run_config(d) for d in dirs]
    return list(zip(labels(dirs, configs), records))


# ----------------------------------------------------------------------------- one run over training

def checkpoint_files(paths: list[str | Path]) -> list[Path]:
    """The checkpoint files that paths name, each once: a file itself, a directory every *.pt file in it
    (by name; a run's kept checkpoints are in its ckpt/). CheckpointError for a directory without one."""
    files, seen = [], set()
    for path in map(Path, paths):
        found = sorted(p for p in path.glob("*.pt") if p.is_file()) if path.is_dir() else [path]
        if not found:
            kept = path / "ckpt"
            hint = f" (the run's kept checkpoints are in {str(kept)!r})" if kept.is_dir() else ""
            raise CheckpointError(f"no checkpoints in {str(path)!r}: it holds no *.pt file{hint}")
        for p in found:
            if p.resolve() not in seen:
                seen.add(p.resolve())
                files.append(p)
    return files


@dataclass
class Snapshot:
    """One checkpoint, loaded: what lm.checkpoint.load_model gives, and the step and evaluation."""

    path: Path
    model: object  # the model, in eval mode, on the device it was loaded to
    vocab: object  # the tokenizer (task lm) or the Task (seq2seq tasks)
    cfg: Config
    vocab_state: dict  # the checkpoint's "tokenizer" entry
    step: int  # optimizer steps completed
    evaluation: dict | None  # that step's evaluation record (see evaluation_of), None when unknown


def load_snapshot(path: str | Path, device="cpu") -> Snapshot:
    """Rebuild a checkpoint's model as lm.checkpoint.load_model does, reading the file once."""
    path = Path(path)
    ckpt = ckpt_io.load(path, map_location=device)
    if not isinstance(ckpt.get("step"), int):
        raise CheckpointError(f"checkpoint {str(path)!r} has no step (found {ckpt.get('step')!r})")
    cfg = from_dict(ckpt["config"])
    model = make_model(cfg)
    ckpt_io.load_weights(model, ckpt, path)
    model.to(device).eval()
    return Snapshot(path, model, vocab_from_state(ckpt["tokenizer"]), cfg, ckpt["tokenizer"], ckpt["step"],
                    evaluation_of(path, ckpt))


def evaluation_of(path: Path, ckpt: dict) -> dict | None:
    """The evaluation of a checkpoint's step: the record saved in it (its "evaluation" key, which kept
    checkpoints have), else the record of that step with a val_loss in its run's metrics.jsonl (the run
    directory is the checkpoint's own, or the one above for a file in ckpt/); None when neither has it."""
    saved = ckpt.get("evaluation")
    if isinstance(saved, dict):
        return saved
    run_dir = path.parent.parent if path.parent.name == "ckpt" else path.parent
    try:
        records = read_metrics(run_dir / "metrics.jsonl")
    except OSError:
        return None
    found = [r for _, r in records if r.get("step") == ckpt["step"] and "val_loss" in r]
    return found[-1] if found else None


def step_label(step: int, evaluation: dict | None) -> str:
    """A checkpoint in a few words: its step and held-out exact match (seq2seq tasks, val_exact, a fraction),
    else its validation loss (language models), else the step alone."""
    evaluation = evaluation or {}
    exact, loss = evaluation.get("val_exact"), evaluation.get("val_loss")
    if isinstance(exact, (int, float)):
        return f"step {step} · exact {100 * exact:.1f}%"
    if isinstance(loss, (int, float)):
        return f"step {step} · val loss {loss:.4f}"
    return f"step {step}"


def _identity(snapshot: Snapshot) -> dict:
    """What makes two checkpoints the same model: the task, every model setting but dropout (which a
    resume may change, and which does nothing at inference), and the vocabulary."""
    cfg = snapshot.cfg
    model = {k: v for k, v in asdict(cfg.model).items() if k != "dropout"}
    op = ({"grid_op": cfg.data.grid_op} if cfg.data.task == "grid" else
          {"graph_op": cfg.data.graph_op} if cfg.data.task == "graph" else {})
    return {"task": cfg.data.task, **op, **model, "vocabulary": snapshot.vocab_state}


def check_same_model(first: Snapshot, other: Snapshot) -> None:
    """CheckpointError, naming both files and the settings that differ, unless both are of one model."""
    a, b = _identity(first), _identity(other)
    differ = [k for k in a if a[k] != b.get(k)]
    if differ:
        shown = "; ".join("the vocabulary differs" if k == "vocabulary" else f"{k}: {a[k]!r} vs {b.get(k)!r}"
                          for k in differ)
        raise CheckpointError(f"{str(first.path)!r} and {str(other.path)!r} are checkpoints of different "
                              f"models ({shown}): give checkpoints of one model, e.g. of one run")
