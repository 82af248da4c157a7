"""The run directory (``out_dir``): one run at a time, one run per directory, nothing lost.

    .lock          held (flock) by the one training process using the directory; removed on exit
    run.json       the run's identity: {"run_id", "created", "resumed_from"}; every checkpoint carries run_id
    last.pt, best.pt, metrics.jsonl, loss.png
                   the run's files (RUN_FILES), never mixed with another run's
    ckpt/          checkpoints kept over time (keep_every, keep_every_epoch: KeptCheckpoints), and
    tensorboard/   the TensorBoard events (logger: tensorboard): the run's directories (RUN_DIRS)
    data/          the token cache, keyed by the corpus, not by the run

A fresh run gets a new run id. Resuming continues the run whose id the checkpoint carries; into a
directory holding another run it is refused (``--overwrite`` replaces that run). A continuation of a
checkpoint into a new directory is a new run that records where it came from.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import time
import uuid
from pathlib import Path

from .files import write_text_atomic

try:  # POSIX
    import fcntl
except ImportError:  # Windows
    fcntl = None
    import msvcrt

RUN_INFO = "run.json"
LOCK = ".lock"
CHECKPOINTS = ("last.pt", "best.pt")
RUN_FILES = (*CHECKPOINTS, "metrics.jsonl", "loss.png", RUN_INFO)
KEPT_DIR = "ckpt"
RUN_DIRS = (KEPT_DIR, "tensorboard")


class RunDirError(ValueError):
    """out_dir cannot be used for this run (in use, or holding another run); the message says what to do."""


class OutputError(RuntimeError):
    """Writing to out_dir failed (read-only, not a directory, disk full); the message names the path."""


def write_failure(path: str | Path, e: OSError, kept: str = "") -> OutputError:
    """An OutputError naming the path, the system's reason and what was kept."""
    reason = e.strerror or str(e)
    where = e.filename or path
    return OutputError(f"cannot write {str(where)!r}: {reason} (errno {e.errno}: {errno.errorcode.get(e.errno, '?')})"
                       + (f"; {kept}" if kept else ""))


class RunLock:
    """Exclusive use of out_dir by one process: ``with RunLock(out_dir): ...``.

    The lock is an advisory file lock (flock) on out_dir/.lock, released by the operating system when
    the process ends however it ends, so a killed run never blocks the next one.
    """

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / LOCK
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise write_failure(self.out_dir, e, "out_dir must be a directory this user can create and write")
        if not self.out_dir.is_dir():
            raise OutputError(f"out_dir {str(self.out_dir)!r} is not a directory")
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise write_failure(self.path, e, "out_dir must be writable")
            if not _try_lock(fd):
                holder = _read_pid(fd)
                os.close(fd)
                raise RunDirError(f"out_dir {str(self.out_dir)!r} is in use by another training process"
                                  f"{f' (pid {holder})' if holder else ''}; wait for it to finish, stop it, "
                                  f"or choose another --out_dir")
            # the holder before us may have removed the file between our open and our lock: lock the live file
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            os.close(self.fd)  # closing releases the lock
            self.fd = None


def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:
        return False


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode().strip()
    except (OSError, AttributeError, UnicodeDecodeError):
        return ""


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def read_info(out_dir: Path) -> dict | None:
    """run.json of out_dir, or None when there is none (or it is unreadable)."""
    try:
        info = json.loads((out_dir / RUN_INFO).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("run_id"), str) else None


def holds_run(out_dir: Path) -> bool:
    """True when out_dir holds any file of a run."""
    return any((out_dir / name).exists() for name in RUN_FILES + RUN_DIRS)


def _describe(out_dir: Path, info: dict | None) -> str:
    if info is None:
        return f"{str(out_dir)!r} holds a run with no run id (written by an older version of lm)"
    return f"{str(out_dir)!r} holds run {info['run_id']}"


def read_metrics(path: Path) -> list[tuple[str, dict]]:
    """metrics.jsonl as (line, record) pairs, without the lines that are not a JSON object (e.g. one
    cut short by a crash). Raises OSError when the file cannot be read."""
    pairs = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            pairs.append((line, record))
    return pairs


def last_logged_step(out_dir: Path) -> int | None:
    """The last training step that out_dir's metrics.jsonl records (None without one): how far its run got."""
    try:
        records = read_metrics(out_dir / "metrics.jsonl")
    except OSError:
        return None
    return max((r["step"] for _, r in records if isinstance(r.get("step"), int)), default=None)


def claim(out_dir: Path, resume_path: Path | None, resume_ckpt: dict | None, overwrite: bool) -> tuple[dict, bool]:
    """Decide whose run out_dir is about to hold; refuse to mix runs or to drop a run's progress. Writes nothing.

    Returns (run info to write in run.json, whether the files of the run now in out_dir must be removed).
    A directory without a checkpoint holds nothing to lose (at most the metrics of a run that never saved).
    """
    existing = read_info(out_dir)
    has_checkpoint = any((out_dir / name).exists() for name in CHECKPOINTS)
    now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    fresh = {"run_id": new_run_id(), "created": now, "resumed_from": None}
    if resume_ckpt is None:
        if has_checkpoint and not overwrite:
            raise RunDirError(f"out_dir {str(out_dir)!r} already holds a run (last.pt / best.pt); continue it with "
                              f"--resume, choose another --out_dir, or pass --overwrite to start over and replace it")
        return fresh, holds_run(out_dir)
    ckpt_id, step = resume_ckpt.get("run_id"), resume_ckpt.get("step")
    if resume_path is not None and resume_path.resolve().parent == out_dir.resolve():
        # one of this directory's own checkpoints: this run (a checkpoint of an older version has no id)
        base = existing or fresh
        return {**base, "run_id": ckpt_id or base["run_id"]}, False
    forked = {**fresh, "resumed_from": {"run_id": ckpt_id, "checkpoint": str(resume_path), "step": step}}
    if not has_checkpoint:
        return forked, holds_run(out_dir)  # a continuation into a new directory: a new run that says where it came from
    if existing is not None and ckpt_id is not None and existing["run_id"] == ckpt_id:
        reached = last_logged_step(out_dir)
        if reached is None or reached <= step:
            return existing, False  # the same run (a copy of its checkpoint), not behind its directory
        if overwrite:
            return forked, True
        raise RunDirError(f"cannot resume: out_dir {str(out_dir)!r} holds run {ckpt_id} up to step {reached}, and the "
                          f"checkpoint {str(resume_path)!r} is the same run at step {step}: resuming from it would "
                          f"discard steps {step + 1}..{reached}. Continue the run with --resume --out_dir="
                          f"{str(out_dir)!r}, continue this checkpoint into another directory with --out_dir=..., "
                          f"or pass --overwrite to rewind the run in {str(out_dir)!r} to step {step}")
    if overwrite:
        return forked, True
    theirs = f"run {ckpt_id}" if ckpt_id else "a run with no run id"
    raise RunDirError(f"cannot resume: out_dir {_describe(out_dir, existing)}, not the run of the checkpoint "
                      f"{str(resume_path)!r} ({theirs}); resuming would mix the two runs' metrics and checkpoints. "
                      f"Continue the checkpoint into another directory with --out_dir=..., or pass --overwrite to "
                      f"replace the run in {str(out_dir)!r}")


def start(out_dir: Path, info: dict, clear: bool) -> None:
    """Make out_dir the home of this run: remove the previous run's files (clear) and write run.json."""
    try:
        if clear:
            for name in RUN_FILES:
                (out_dir / name).unlink(missing_ok=True)
            for name in RUN_DIRS:
                if (out_dir / name).is_dir():
                    shutil.rmtree(out_dir / name)
        write_text_atomic(out_dir / RUN_INFO, json.dumps(info, indent=1) + "\n")
    except OSError as e:
        raise write_failure(out_dir / RUN_INFO, e)


class KeptCheckpoints:
    """The checkpoints a run keeps over time in out_dir/ckpt/: step_000500.pt every keep_every steps,
    epoch_0003.pt at the end of every epoch (keep_every_epoch; epoch e ends at step
    ceil(e * steps_per_epoch), as the run's length counts epochs), at most keep_last of them (the
    oldest removed first). Each is a whole checkpoint (resumable, with the run id) plus the evaluation
    of its step."""

    STEP, EPOCH = re.compile(r"step_(\d+)\.pt"), re.compile(r"epoch_(\d+)\.pt")

    def __init__(self, out_dir: Path, every: int | None, every_epoch: bool, last: int | None,
                 steps_per_epoch: float | None):
        self.dir, self.every, self.every_epoch, self.last = out_dir / KEPT_DIR, every, every_epoch, last
        self.steps_per_epoch = steps_per_epoch

    @property
    def enabled(self) -> bool:
        return self.every is not None or self.every_epoch

    def names(self, step: int) -> list[str]:
        """The kept checkpoints to write at a step, as paths relative to out_dir (none at most steps)."""
        names = []
        if self.every is not None and step % self.every == 0:
            names.append(f"{KEPT_DIR}/step_{step:06d}.pt")
        if self.every_epoch and self.steps_per_epoch:
            epoch = math.floor(step / self.steps_per_epoch + 1e-9)
            if epoch >= 1 and math.ceil(epoch * self.steps_per_epoch - 1e-9) == step:
                names.append(f"{KEPT_DIR}/epoch_{epoch:04d}.pt")
        return names

    def step_of(self, path: Path) -> int | None:
        """The step a kept checkpoint's name stands for (None for a file that is not one)."""
        if m := self.STEP.fullmatch(path.name):
            return int(m.group(1))
        if (m := self.EPOCH.fullmatch(path.name)) and self.steps_per_epoch:
            return math.ceil(int(m.group(1)) * self.steps_per_epoch - 1e-9)
        return None

    def files(self) -> list[tuple[int, Path]]:
        """(step, path) of the kept checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(self.step_of(p), p) for p in self.dir.iterdir()]
        return sorted((step, p) for step, p in found if step is not None)

    def prune(self) -> None:
        """Remove the oldest kept checkpoints beyond keep_last."""
        files = self.files()
        if self.last is not None:
            for _, path in files[: max(0, len(files) - self.last)]:
                path.unlink(missing_ok=True)

    def drop_after(self, step: int) -> None:
        """Remove the kept checkpoints of steps after `step` (a resumed run takes those steps again)."""
        for s, path in self.files():
            if s > step:
                path.unlink(missing_ok=True)
