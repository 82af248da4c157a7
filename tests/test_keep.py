"""Checkpoints kept over time: keep_every (ckpt/step_000005.pt), keep_every_epoch (ckpt/epoch_0001.pt),
keep_last; each a whole checkpoint of the run (its run id, its evaluation), covered by resume, --overwrite
and the rewind check like last.pt; the size each costs, said at the start."""

import json
import math
import re

import pytest

from helpers import cli, metrics, tiny
from lm import checkpoint, config
from lm.trainer import train


def kept(out):
    return sorted(p.name for p in (out / "ckpt").iterdir()) if (out / "ckpt").exists() else []


def test_keep_every_keeps_evaluated_checkpoints_of_the_run(small_corpus, tmp_path):
    out = tmp_path / "run"
    train(config.load(None, tiny(small_corpus, out, "--max_iters=12", "--eval_interval=6", "--keep_every=4")))
    assert kept(out) == ["step_000004.pt", "step_000008.pt", "step_000012.pt"]
    run_id = json.loads((out / "run.json").read_text())["run_id"]
    evaluated = {r["step"]: r for r in metrics(out) if "val_loss" in r and not r.get("final")}
    assert sorted(evaluated) == [4, 6, 8, 12]  # every keep step is evaluated, as well as every eval_interval
    for name, step in (("step_000004.pt", 4), ("step_000008.pt", 8), ("step_000012.pt", 12)):
        ckpt = checkpoint.load(out / "ckpt" / name)
        assert ckpt["step"] == step and ckpt["run_id"] == run_id
        assert ckpt["evaluation"]["val_loss"] == pytest.approx(evaluated[step]["val_loss"])
        assert "model" in ckpt and "optimizer" in ckpt  # whole: a run resumes from it


def test_keep_last_removes_the_oldest(small_corpus, tmp_path):
    out = tmp_path / "run"
    train(config.load(None, tiny(small_corpus, out, "--max_iters=10", "--keep_every=2", "--keep_last=2")))
    assert kept(out) == ["step_000008.pt", "step_000010.pt"]


def test_keep_every_epoch_names_them_by_epoch(small_corpus, tmp_path):
    out = tmp_path / "run"
    cfg = config.load(None, tiny(small_corpus, out, "--epochs=3", "--max_iters=null", "--eval_interval=1000"))
    events = []
    cfg.train.keep_every_epoch = True
    train(cfg, on_event=events.append)
    assert kept(out) == ["epoch_0001.pt", "epoch_0002.pt", "epoch_0003.pt"]
    start = next(e for e in events if e["event"] == "start")
    per_epoch = start["total_steps"] / 3
    steps = [checkpoint.load(out / "ckpt" / n)["step"] for n in kept(out)]
    assert steps == [math.ceil(e * per_epoch - 1e-9) for e in (1, 2, 3)]


def test_keep_every_epoch_is_refused_for_a_task_without_epochs(tmp_path):
    done = cli("train.py", "--task=reverse", f"--out_dir={tmp_path / 'rev'}", "--keep_every_epoch=true",
               "--max_iters=2", "--device=cpu")
    assert done.returncode == 2, done.stderr
    assert "keep_every_epoch" in done.stderr and "keep_every" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "rev" / "last.pt").exists()


@pytest.mark.parametrize("key, value", [("keep_every", 0), ("keep_last", -1), ("show_examples", -2)])
def test_bad_keep_settings_are_refused(small_corpus, tmp_path, key, value):
    done = cli("train.py", *tiny(small_corpus, tmp_path / "run", f"--{key}={value}"))
    assert done.returncode == 2 and key in done.stderr and str(value) in done.stderr, done.stderr


def test_the_start_says_what_each_kept_checkpoint_costs(small_corpus, tmp_path):
    out = tmp_path / "run"
    events = []
    args = tiny(small_corpus, out, "--max_iters=4", "--keep_every=4", "--embedding_dim=64", "--num_blocks=2")
    train(config.load(None, args), on_event=events.append)
    estimate = next(e for e in events if e["event"] == "start")["kept_checkpoint_bytes"]
    actual = (out / "ckpt" / "step_000004.pt").stat().st_size
    assert estimate == pytest.approx(actual, rel=0.05)
    done = cli("train.py", *args, "--overwrite")
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("keeping a checkpoint"))
    assert "every 4 steps" in line and str(out / "ckpt") in line
    shown = float(re.search(r"~([\d.]+) (KiB|MiB) each", line).group(1))
    unit = 2**10 if "KiB" in line else 2**20
    assert shown * unit == pytest.approx(actual, rel=0.1)


def test_resuming_from_a_kept_checkpoint_is_a_rewind_refused_without_overwrite(small_corpus, tmp_path):
    out = tmp_path / "run"
    args = tiny(small_corpus, out, "--max_iters=8", "--keep_every=4")
    assert cli("train.py", *args).returncode == 0
    done = cli("train.py", *args, f"--resume={out / 'ckpt' / 'step_000004.pt'}")
    assert done.returncode == 2 and "rewind" in done.stderr and "--overwrite" in done.stderr, done.stderr
    assert kept(out) == ["step_000004.pt", "step_000008.pt"]  # nothing touched
    done = cli("train.py", *args, f"--resume={out / 'ckpt' / 'step_000004.pt'}", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert kept(out) == ["step_000008.pt"]  # the run was rewound to step 4; steps 5..8 taken again
    assert [r["step"] for r in metrics(out) if not r.get("final")][0] == 5


class Crash(Exception):
    pass


def test_a_resume_drops_the_kept_checkpoints_past_its_step_and_takes_them_again(small_corpus, tmp_path):
    out = tmp_path / "run"
    args = tiny(small_corpus, out, "--max_iters=12", "--keep_every=3", "--eval_interval=6")

    def crash(event):
        if event["event"] == "step" and event["step"] == 11:
            raise Crash

    with pytest.raises(Crash):
        train(config.load(None, args), on_event=crash)
    assert kept(out) == ["step_000003.pt", "step_000006.pt", "step_000009.pt"]
    # last.pt as of step 6 (e.g. put back from a copy): resuming drops step 9's kept checkpoint, then keeps it anew
    (out / "last.pt").write_bytes((out / "ckpt" / "step_000006.pt").read_bytes())
    old = (out / "ckpt" / "step_000009.pt").stat().st_ino, (out / "ckpt" / "step_000009.pt").stat().st_mtime_ns
    done = cli("train.py", *args, "--resume")
    assert done.returncode == 0, done.stderr
    assert "at step 6" in done.stdout
    assert kept(out) == ["step_000003.pt", "step_000006.pt", "step_000009.pt", "step_000012.pt"]
    new = (out / "ckpt" / "step_000009.pt").stat().st_ino, (out / "ckpt" / "step_000009.pt").stat().st_mtime_ns
    assert new != old and checkpoint.load(out / "ckpt" / "step_000009.pt")["step"] == 9


def test_overwrite_removes_the_kept_checkpoints(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--keep_every=2")).returncode == 0
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--overwrite"))
    assert done.returncode == 0, done.stderr
    assert not (out / "ckpt").exists()
