"""Writing files so that a crash, a kill or a full disk never leaves one half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO, Callable


def write_atomic(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write path through write(f): into a temporary file beside it (``.NAME.tmp-PID``, its directory
    created if missing) that is flushed to disk and then renamed over path. Readers see the old file
    or the new one, never part of one; when anything fails, the old file stays as it was, the
    temporary is removed, and the error is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def write_text_atomic(path: str | Path, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete temporaries left by writes that were killed mid-way (they are never complete)."""
    stale = list(Path(directory).glob(".*.tmp-*"))
    for f in stale:
        f.unlink(missing_ok=True)
    return stale


def remove_abandoned_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporaries of writes whose process is gone (killed mid-way); those of live processes
    on this machine, which may be writing now, are left alone."""
    gone = []
    for f in Path(directory).glob(".*.tmp-*"):
        pid = f.name.rsplit("-", 1)[1]
        if pid.isdigit() and not _alive(int(pid)):
            f.unlink(missing_ok=True)
            gone.append(f)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True
