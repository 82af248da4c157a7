"""Several runs side by side: each one's metrics, labelled by the settings that tell the runs apart."""

from __future__ import annotations

from pathlib import Path

from . import checkpoint as ckpt_io
from .checkpoint import CheckpointError
from .rundir import read_metrics

MAX_SETTINGS = 4  # a label names at most this many differing settings


class RunError(ValueError):
    """A run directory that cannot be compared (no metrics, or no checkpoint to read its config from)."""


def run_config(run_dir: Path) -> dict:
    """The run's config (as saved in its checkpoints), flattened to {setting: value}; keys are unique
    across sections, so the section is dropped."""
    problems = []
    for name in ("last.pt", "best.pt"):
        try:
            saved = ckpt_io.load(run_dir / name)["config"]
            return {key: value for section in saved.values() for key, value in section.items()}
        except CheckpointError as e:
            problems.append(str(e))
    raise RunError(f"{str(run_dir)!r} has no readable checkpoint to read its settings from: {'; '.join(problems)}")


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


def labels(run_dirs: list[Path], configs: list[dict]) -> list[str]:
    """'DIR: setting=value, ...' with the settings whose values differ between the runs (out_dir aside)."""
    keys = [k for k in configs[0] if k != "out_dir" and len({repr(c.get(k)) for c in configs}) > 1]
    out = []
    for run_dir, config in zip(run_dirs, configs):
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
