"""Adversarial cases: crashes, kills, signals, bad files and bad flags never cost a user their run.

Each test drives the real command-line programs where a user would, and is bounded in time.
"""

import shutil
import signal
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, RunsCode
from helpers import (TIMEOUT, all_finite, cli, launcher, losses, metrics, popen, same_weights, snapshot, tiny,
                     wait_for)
from lm import checkpoint

# 1. --------------------------------------------------------------------------------------------------------

# A launcher that stops the save of last.pt over an earlier one half-way: torch.save's bytes are made, half
# of them go to the file the checkpoint is being written to, MARKER then says so (it appears whole, renamed
# into place, holding the checkpoint's full size), and the process sleeps there until the test kills it.
# Every other save is left alone.
STALL_IN_A_SAVE = """
import io, time, torch, lm.checkpoint
from pathlib import Path
original_save, original_torch_save = lm.checkpoint.save, torch.save
stalling = []
def save(path, payload):
    stalling[:] = [Path(path).name == "last.pt" and Path(path).exists()]
    return original_save(path, payload)
def torch_save(obj, f, *args, **kwargs):
    if not stalling or not stalling[0]:
        return original_torch_save(obj, f, *args, **kwargs)
    whole = io.BytesIO()
    original_torch_save(obj, whole, *args, **kwargs)
    f.write(whole.getvalue()[: len(whole.getvalue()) // 2])
    Path(MARKER + ".tmp").write_text(str(len(whole.getvalue())))
    os.replace(MARKER + ".tmp", MARKER)
    time.sleep(3600)
lm.checkpoint.save, torch.save = save, torch_save
"""


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_save_keeps_the_previous_one(small_corpus, tmp_path):
    """kill -9 in the middle of writing last.pt over the step-1 one (a save at every step; a launcher
    stops the step-2 save half-way and says when, so the kill lands there on any machine): last.pt is
    still the whole step-1 checkpoint, and --resume continues from it and clears the temporary."""
    out, marker = tmp_path / "run", tmp_path / "half-written"
    stall = launcher(tmp_path, f"MARKER = {str(marker)!r}\n" + STALL_IN_A_SAVE)
    proc = popen("train.py", *tiny(small_corpus, out, "--eval_interval=1", "--max_iters=4"), launcher=stall)
    try:
        wait_for(marker.exists, proc, "the step-2 save of last.pt to be half-written")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    saved = checkpoint.load(out / "last.pt")  # whole: a truncated or corrupt file raises here
    assert saved["step"] == 1
    partial = list(out.glob(".*.pt.tmp-*"))  # the save really was cut short, in a temporary file
    assert len(partial) == 1 and partial[0].stat().st_size < int(marker.read_text()), partial
    r = cli("train.py", "--resume", f"--out_dir={out}", "--max_iters=3")
    assert r.returncode == 0, r.stderr
    assert "at step 1" in r.stdout
    assert checkpoint.load(out / "last.pt")["step"] == 3
    assert not any(out.glob(".*.pt.tmp-*"))  # the stale temporary was cleared


@pytest.mark.slow
def test_truncated_checkpoint_is_passed_over_and_reported(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=6", "--eval_interval=3", "--lr_decay_iters=8",
                                 "--lr=1e-2")).returncode == 0
    best_step = checkpoint.load(out / "best.pt")["step"]
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])

    s = cli("sample.py", "--checkpoint", out / "last.pt", "--max_new_tokens", 5)
    assert s.returncode == 2 and "truncated or corrupt" in s.stderr and "Traceback" not in s.stderr

    r = cli("train.py", "--resume", f"--out_dir={out}", "--max_iters=8")
    assert r.returncode == 0, r.stderr
    assert "passed over a damaged checkpoint" in r.stderr and "truncated or corrupt" in r.stderr
    assert f"resuming from {out / 'best.pt'} at step {best_step}" in r.stdout


# 2. --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.slow
def test_signal_checkpoints_at_a_step_boundary_and_resume_matches(small_corpus, tmp_path, sig, code):
    args = ["--batch_size=16", "--block_size=32", "--embedding_dim=64", "--num_blocks=2", "--max_iters=300",
            "--eval_interval=100", "--dropout=0.1"]
    straight = tmp_path / "straight"
    assert cli("train.py", *tiny(small_corpus, straight, *args)).returncode == 0

    out = tmp_path / "interrupted"
    proc = popen("train.py", *tiny(small_corpus, out, *args))
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() and len(metrics(out)) >= 20, proc, "20 steps")
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == code, stderr
    assert "interrupted: stopped at step" in stderr
    stopped = checkpoint.load(out / "last.pt")["step"]
    assert 20 <= stopped < 300
    assert losses(out)[-1][0] == stopped  # the metrics end at the checkpointed step

    r = cli("train.py", "--resume", f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    assert f"at step {stopped}" in r.stdout
    assert losses(out) == losses(straight)


# 3. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_exact_resume_with_dropout_twice_from_one_checkpoint(small_corpus, tmp_path):
    """Through the real train.py: 12 steps straight == 6 steps, then --resume to 12, done twice from copies
    of one run directory (dropout on, the break in the middle of an evaluation interval)."""
    args = ["--dropout=0.2", "--eval_interval=5", "--lr_decay_iters=12"]
    straight = tmp_path / "straight"
    assert cli("train.py", *tiny(small_corpus, straight, *args, "--max_iters=12")).returncode == 0

    first = tmp_path / "first"
    assert cli("train.py", *tiny(small_corpus, first, *args, "--max_iters=6")).returncode == 0
    assert checkpoint.load(first / "last.pt")["step"] == 6
    second = tmp_path / "second"
    shutil.copytree(first, second)
    for run in (first, second):
        r = cli("train.py", "--resume", f"--out_dir={run}", "--max_iters=12")
        assert r.returncode == 0, r.stderr
        assert "at step 6" in r.stdout
        assert losses(run) == losses(straight)
        assert same_weights(checkpoint.load(straight / "last.pt"), checkpoint.load(run / "last.pt"))


# 4. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_malicious_checkpoint_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": {}, "config": {}, "step": 1, "payload": RunsCode(marker)}, run / "last.pt")
    for r in (cli("sample.py", "--checkpoint", run / "last.pt"),
              cli("train.py", "--resume", f"--out_dir={run}"),
              cli("train.py", f"--resume={run / 'last.pt'}", f"--out_dir={tmp_path / 'other'}")):
        assert r.returncode == 2 and "refused" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not marker.exists()


# 5. --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("yaml_text,needles", [
    ("colour: blue\n", ["unknown key 'colour'"]),
    ("train:\n  lr: abc\n", ["lr", "'abc'", "a number"]),
    ("batch_size: 0\n", ["batch_size", "positive"]),
    ("embedding_dim: -8\n", ["embedding_dim", "-8", "positive"]),
    ("eval_interval: 0\n", ["eval_interval", "positive"]),
    ("max_iters: -1\n", ["max_iters", "> 0"]),
    ("lr: !!python/object/apply:os.system ['echo hi']\n", ["not valid YAML", "no tags"]),
    ("model: [1, 2]\n", ["section 'model' must be a mapping"]),
])
@pytest.mark.slow
def test_config_fuzzing_fails_before_training(tmp_path, yaml_text, needles):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml_text + f"out_dir: {tmp_path / 'out'}\n")
    r = cli("train.py", "--config", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    assert not (tmp_path / "out").exists()


# 6. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_non_finite_loss_stops_without_corrupting_checkpoints(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--eval_interval=4")).returncode == 0
    before = snapshot(out)
    r = cli("train.py", "--resume", f"--out_dir={out}", "--max_iters=40", "--eval_interval=2", "--lr=1e30",
            "--min_lr=1e30", "--warmup_iters=0", "--grad_clip=0")
    assert r.returncode == 1, r.stderr
    assert "loss became" in r.stderr or "non-finite" in r.stderr
    for name in ("last.pt", "best.pt"):
        assert all_finite(checkpoint.load(out / name))
    assert {k: v for k, v in snapshot(out).items() if k.suffix == ".pt"} == \
           {k: v for k, v in before.items() if k.suffix == ".pt"}


# 7. --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,needle", [
    ("invalid_utf8", "not valid UTF-8: byte offset 5"),
    ("empty", "is empty"),
    ("one_char", "too short"),
    ("shorter_than_block", "too short"),
    ("directory", "is a directory"),
    ("missing", "does not exist"),
    ("binary", "binary"),
])
@pytest.mark.slow
def test_bad_corpora_are_named_and_nothing_is_overwritten(small_corpus, tmp_path, kind, needle):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2")).returncode == 0
    before = snapshot(out)
    bad = tmp_path / f"{kind}.txt"
    contents = {"invalid_utf8": b"hello\xc3\x28 world" * 20, "empty": b"", "one_char": b"x",
                "shorter_than_block": b"To be or not", "binary": bytes(range(256)) * 4}
    if kind == "directory":
        bad.mkdir()
    elif kind in contents:
        bad.write_bytes(contents[kind])
    r = cli("train.py", *tiny(bad, out, "--max_iters=2", "--overwrite"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert needle in r.stderr and str(bad) in r.stderr, r.stderr
    assert snapshot(out) == before


@pytest.mark.slow
def test_a_fresh_run_never_replaces_an_existing_one(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2")).returncode == 0
    before = snapshot(out)
    r = cli("train.py", *tiny(small_corpus, out, "--max_iters=2"))
    assert r.returncode == 2 and "already holds a run" in r.stderr and "--overwrite" in r.stderr
    assert snapshot(out) == before
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=3", "--overwrite")).returncode == 0
    assert checkpoint.load(out / "last.pt")["step"] == 3


# 8. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_bad_sampling_input(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2")).returncode == 0
    ck = out / "last.pt"
    errors = [
        (["--prompt", "Citizen€"], "1 character(s) not in the vocabulary: '€'"),
        (["--prompt", ""], "prompt is empty"),
        (["--temperature", "-0.1"], "temperature -0.1 is not allowed"),
        (["--top_p", "0"], "top_p 0.0 is not allowed; it must be in (0, 1]"),
        (["--top_p", "1.01"], "top_p 1.01 is not allowed"),
        (["--top_k", "0"], "top_k 0 is not allowed"),
        (["--max_new_tokens", "-1"], "max_new_tokens -1 is not allowed"),
        (["--num_samples", "0"], "--num_samples 0 is not allowed"),
    ]
    for args, needle in errors:
        r = cli("sample.py", "--checkpoint", ck, *args)
        assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    works = cli("sample.py", "--checkpoint", ck, "--prompt", "First", "--max_new_tokens", 0)
    assert works.returncode == 0 and works.stdout == "First\n"
    long_prompt = "To be, or not to be: " * 3  # longer than block_size 16: the window slides
    r = cli("sample.py", "--checkpoint", ck, "--prompt", long_prompt, "--max_new_tokens", 10, "--temperature", 0)
    assert r.returncode == 0 and r.stdout.startswith(long_prompt) and len(r.stdout) == len(long_prompt) + 11
    assert "sees only the last 16" in r.stderr


# 9. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_mismatches(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2")).returncode == 0

    r = cli("train.py", "--resume", f"--out_dir={out}", "--embedding_dim=32")
    assert r.returncode == 2 and "model differs" in r.stderr
    assert "embedding_dim: checkpoint has 16, config has 32" in r.stderr

    other = tmp_path / "other.txt"
    other.write_text(small_corpus.read_text() + "ÆØÅ")
    r = cli("train.py", "--resume", f"--out_dir={out}", f"--data_path={other}")
    assert r.returncode == 2 and "does not fit the checkpoint's vocabulary" in r.stderr and "'Æ'" in r.stderr

    before = snapshot(out)
    new = tmp_path / "continued"
    r = cli("train.py", f"--resume={out}", f"--out_dir={new}", "--max_iters=4", "--lr=1e-3", "--dropout=0.1")
    assert r.returncode == 0, r.stderr
    for change in (f"train.out_dir: '{out}' -> '{new}'", "train.max_iters: 2 -> 4", "train.lr: 0.002 -> 0.001",
                   "model.dropout: 0.0 -> 0.1"):
        assert change in r.stdout, (change, r.stdout)
    assert checkpoint.load(new / "last.pt")["step"] == 4
    assert snapshot(out) == before  # the original run is untouched


@pytest.mark.slow
def test_resume_refuses_a_different_task_vocabulary(tmp_path):
    out = tmp_path / "copy"
    args = ["--task=copy", "--max_len=4", "--eval_long_len=4", "--held_out_size=10", "--block_size=8",
            "--num_blocks=1", "--embedding_dim=16", "--num_heads=2", "--max_iters=2", "--eval_interval=2",
            f"--out_dir={out}", "--device=cpu"]
    assert cli("train.py", *args).returncode == 0
    r = cli("train.py", "--resume", f"--out_dir={out}", "--num_symbols=12")
    assert r.returncode == 2 and "vocabulary differs" in r.stderr
    assert "num_symbols 10" in r.stderr and "num_symbols 12" in r.stderr


# 10. -------------------------------------------------------------------------------------------------------

LIMITED = """
import os, resource, runpy, sys
import torch  # its own mappings count towards the limit
vm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize")) * 1024
limit = vm + 3 * 2**30  # 3 GiB of head-room
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(sys.argv[0]))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.slow
def test_out_of_memory_is_explained_and_checkpoints_survive(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2",
                                 "--embedding_dim=64")).returncode == 0
    before = snapshot(out)
    launcher = tmp_path / "limited.py"
    launcher.write_text(LIMITED)
    # one micro-batch of 1,000,000 windows needs > 4 GiB of activations: more than the head-room
    r = subprocess.run([sys.executable, str(launcher), str(ROOT / "train.py"), "--resume", f"--out_dir={out}",
                        "--batch_size=1000000", "--max_iters=4"], capture_output=True, text=True, timeout=TIMEOUT)
    assert r.returncode == 1, r.stderr
    assert "out of memory" in r.stderr and "--batch_size=500000 --grad_accum=2" in r.stderr
    assert "Traceback" not in r.stderr
    assert snapshot(out) == before
