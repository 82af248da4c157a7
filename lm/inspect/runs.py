"""Several runs side by side: each one's metrics, labelled by the settings that tell the runs apart."""

from __future__ import annotations

from pathlib import Path

from .. import checkpoint as ckpt_io
from ..checkpoint import CheckpointError
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
