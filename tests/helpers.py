"""Shared by the tests that drive the real command-line programs."""

import hashlib
import json
import subprocess
import sys
import time

import torch

from conftest import ROOT

TIMEOUT = 180


def cli(script, *args, cwd=None, timeout=TIMEOUT, env=None, launcher=None, **kwargs):
    """Run ROOT/script with args; with launcher (a Python file), run it through that file first."""
    pre = [str(launcher)] if launcher else []
    return subprocess.run([sys.executable, *pre, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def popen(script, *args, **kwargs):
    return subprocess.Popen([sys.executable, str(ROOT / script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def tiny(corpus, out, *extra):
    """Arguments for a small, fast CPU run."""
    return [f"--data_path={corpus}", f"--out_dir={out}", "--block_size=16", "--batch_size=4", "--num_blocks=1",
            "--num_heads=2", "--embedding_dim=16", "--eval_iters=1", "--log_interval=1", "--warmup_iters=2",
            "--device=cpu", *extra]


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def losses(out_dir):
    return [(r["step"], r["train_loss"]) for r in metrics(out_dir) if "train_loss" in r and not r.get("final")]


def snapshot(directory):
    return {p.relative_to(directory): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def checkpoints(directory):
    return {k: v for k, v in snapshot(directory).items() if k.suffix == ".pt"}


def wait_for(predicate, proc, what, limit=90.0, kill=None):
    """Poll predicate until it holds; fail if proc ends first or limit seconds pass (then kill(), by
    default proc.kill(), ends it)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            (kill or proc.kill)()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


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
