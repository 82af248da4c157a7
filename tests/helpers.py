"""Shared by the tests that drive the real command-line programs."""

import hashlib
import json
import subprocess
import sys
import time

import numpy as np
import torch

from conftest import ROOT

# The most one command (a train.py or sample.py run) may take: a guard against a hang, not a speed check. The
# longest here (300 steps of a 2-block model, tests/test_reliability.py) took 404 s on 2 busy cores (load 5).
TIMEOUT = 600


def cli(script, *args, cwd=None, timeout=TIMEOUT, env=None, launcher=None, **kwargs):
    """Run ROOT/script with args; with launcher (a Python file), run it through that file first."""
    pre = [str(launcher)] if launcher else []
    return subprocess.run([sys.executable, *pre, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def popen(script, *args, launcher=None, **kwargs):
    """Start ROOT/script with args (through launcher first, as cli does), its output piped."""
    pre = [str(launcher)] if launcher else []
    return subprocess.Popen([sys.executable, *pre, str(ROOT / script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def tiny(corpus, out, *extra):
    """Arguments for a small, fast CPU run."""
    return [f"--data_path={corpus}", f"--out_dir={out}", "--block_size=16", "--batch_size=4", "--num_blocks=1",
            "--num_heads=2", "--embedding_dim=16", "--eval_iters=1", "--log_interval=1", "--warmup_iters=2",
            "--device=cpu", *extra]


def metrics(out_dir):
    """The complete records of out_dir/metrics.jsonl: a line still being written (no newline yet) by a run
    in progress is left for the next read."""
    text = (out_dir / "metrics.jsonl").read_text()
    return [json.loads(line) for line in text[:text.rfind("\n") + 1].splitlines()]


def losses(out_dir):
    return [(r["step"], r["train_loss"]) for r in metrics(out_dir) if "train_loss" in r and not r.get("final")]


def snapshot(directory):
    return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def checkpoints(directory):
    return {k: v for k, v in snapshot(directory).items() if k.suffix == ".pt"}


def wait_for(predicate, proc, what, limit=TIMEOUT, kill=None):
    """Poll predicate (a state that, once reached, stays: a file, a count of lines) until it holds; fail if
    proc ends first, or if limit seconds pass (then kill(), by default proc.kill(), ends it), with its
    stderr. A wait is for part of one command's run, so by default it may take as long as a whole command
    (TIMEOUT); it returns as soon as the state is reached, so a wide limit costs nothing."""
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {what}: {stderr_of(proc)}")
        if time.monotonic() > deadline:
            (kill or proc.kill)()
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}: {stderr_of(proc)}")
        time.sleep(0.01)


def stderr_of(proc, limit=10.0):
    """The rest of an ended (or killed) proc's stderr, read for at most limit seconds: a process it started
    (a data-loader worker, a torchrun worker) may still hold the pipe open."""
    if proc.stderr is None:
        return "(stderr not captured)"
    try:
        return proc.communicate(timeout=limit)[1]
    except subprocess.TimeoutExpired as e:
        part = e.stderr or b""
        part = part.decode(errors="replace") if isinstance(part, bytes) else part
        return f"{part}\n(the rest unread: the pipe was still open {limit:.0f} s later)"


def all_finite(ckpt):
    return all(torch.isfinite(v).all() for v in ckpt["model"].values())


def same_weights(a, b):
    return a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def launcher(tmp_path, body, name="launch.py"):
    """A Python file that runs `body` (set-up: patches, limits, hooks) and then the script named by its
    first argument, as `python launch.py train.py ARGS...` would run `python train.py ARGS...`."""
    path = tmp_path / name
    path.write_text("import os, runpy, sys\n"
                    f"sys.path.insert(0, {str(ROOT)!r})\n"
                    + body +
                    "\nsys.argv = sys.argv[1:]\n"
                    "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    return path


def cpp_compiler() -> str | None:
    """The path of the C++ compiler torch.compile's CPU backend (Inductor) would use, or None: as
    torch._inductor.cpp_builder.get_cpp_compiler searches, the first of torch._inductor.config.cpp.cxx
    (the CXX variable, else g++; clang++ on macOS) that is on PATH. Its None entry, a g++ that Inductor
    downloads with conda only when TORCH_INDUCTOR_INSTALL_GXX is set, is passed over."""
    import shutil

    try:
        from torch._inductor import config as inductor_config

        search = inductor_config.cpp.cxx
        names = list(search) if isinstance(search, (list, tuple)) else [search]
    except (ImportError, AttributeError):  # an Inductor without this setting
        names = []
    for name in [n for n in names if n] or ["g++", "clang++", "c++"]:
        path = shutil.which(name)
        if path:
            return path
    return None


def require_compiler() -> None:
    """Skip the calling test where torch.compile cannot compile on this machine (TorchDynamo unsupported on
    this Python or platform, or no C++ compiler for Inductor), saying why; fail it instead where
    LM_REQUIRE_COMPILER=1 (as CI sets it: the compile tests must run there)."""
    import os

    import pytest
    import torch._dynamo

    if not torch._dynamo.is_dynamo_supported():
        why = f"torch.compile is not supported on this Python ({sys.version.split()[0]}) or platform"
    elif cpp_compiler() is None:
        why = ("no C++ compiler for torch.compile's CPU backend (Inductor looks for the CXX variable, else g++); "
               "install one (apt-get install g++) or set CXX")
    else:
        return
    if os.environ.get("LM_REQUIRE_COMPILER") == "1":
        pytest.fail(f"LM_REQUIRE_COMPILER=1 and {why}", pytrace=False)
    pytest.skip(why)


def grid_reference(op: str, grid) -> np.ndarray:
    """A grid task's output grid, each op written independently of lm.data.tasks, with numpy."""
    grid = np.asarray(grid)
    if op == "rotate":
        return np.rot90(grid, k=-1)
    if op == "transpose":
        return grid.T
    if op == "flip":
        return np.fliplr(grid)
    # gravity: a stable sort of each column on "is coloured" puts background first, order kept
    order = np.argsort(grid != 0, axis=0, kind="stable")
    return np.take_along_axis(grid, order, axis=0)
