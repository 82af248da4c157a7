"""Nothing lost, anywhere: run identity, overwrite, locks, metrics across resumes, unwritable out_dirs,
out of memory in every phase, signals between phases, and the settings that must be refused.

Each test drives the real train.py where a user would. A few use a launcher (helpers.launcher) that
sets a limit or wraps one function before running train.py unchanged, to reach a failure at an exact
point; it says which.
"""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest

import train as train_cli
from conftest import ROOT
from helpers import (TIMEOUT, all_finite, checkpoints, cli, launcher, losses, metrics, popen, same_weights,
                     snapshot, tiny, wait_for)
from lm import checkpoint, config, rundir
from lm.data.windows import window_batch

TIMINGS = ("tokens_per_sec", "elapsed_s")


def run_id(out_dir):
    return json.loads((out_dir / "run.json").read_text())["run_id"]


def train_ok(*args, **kwargs):
    r = cli("train.py", *args, **kwargs)
    assert r.returncode == 0, r.stderr
    return r


# 1. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_never_mixes_two_runs(small_corpus, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_ok(*tiny(small_corpus, a, "--max_iters=4", "--eval_interval=2"))
    train_ok(*tiny(small_corpus, b, "--max_iters=2", "--eval_interval=2", "--seed=7"))
    id_a, id_b = run_id(a), run_id(b)
    assert id_a != id_b and checkpoint.load(a / "last.pt")["run_id"] == id_a

    # --resume=PATH --out_dir=X, X holding another run: refused, naming both runs and the ways out
    before = snapshot(b)
    r = cli("train.py", f"--resume={a / 'last.pt'}", f"--out_dir={b}", "--max_iters=6")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    for needle in (id_a, id_b, str(b), "--out_dir", "--overwrite"):
        assert needle in r.stderr, (needle, r.stderr)
    assert snapshot(b) == before

    # --resume=PATH alone writes to the checkpoint's saved out_dir: here a copy of a's checkpoint, after a
    # new run replaced a's directory
    saved = tmp_path / "kept" / "a-step4.pt"
    saved.parent.mkdir()
    shutil.copy(a / "last.pt", saved)
    train_ok(*tiny(small_corpus, a, "--max_iters=2", "--eval_interval=2", "--overwrite"))
    before = snapshot(a)
    r = cli("train.py", f"--resume={saved}", "--max_iters=6")
    assert r.returncode == 2 and id_a in r.stderr and run_id(a) in r.stderr, r.stderr
    assert snapshot(a) == before

    # the same run in its own directory keeps working, and so does a continuation into a new directory
    r = train_ok("--resume", f"--out_dir={b}", "--max_iters=4")
    assert "at step 2" in r.stdout and run_id(b) == id_b
    c = tmp_path / "c"
    train_ok(f"--resume={saved}", f"--out_dir={c}", "--max_iters=6")
    info = json.loads((c / "run.json").read_text())
    assert info["run_id"] not in (id_a, id_b) and info["resumed_from"]["run_id"] == id_a
    assert info["resumed_from"]["step"] == 4

    # --overwrite replaces the other run with the continuation
    train_ok(f"--resume={saved}", f"--out_dir={b}", "--max_iters=6", "--overwrite")
    assert json.loads((b / "run.json").read_text())["resumed_from"]["run_id"] == id_a
    assert [s for s, _ in losses(b)] == [5, 6]  # the continuation's steps: nothing of b's old run is left


@pytest.mark.slow
def test_the_same_run_resumes_and_a_rewind_is_refused(small_corpus, tmp_path):
    a = tmp_path / "a"
    train_ok(*tiny(small_corpus, a, "--max_iters=4", "--eval_interval=2", "--lr_decay_iters=20"))
    backup = tmp_path / "backup" / "step4.pt"
    backup.parent.mkdir()
    shutil.copy(a / "last.pt", backup)
    train_ok("--resume", f"--out_dir={a}", "--max_iters=8")
    before = snapshot(a)
    r = cli("train.py", f"--resume={backup}", "--max_iters=12")  # writes to the checkpoint's out_dir, a
    assert r.returncode == 2 and "would discard steps 5..8" in r.stderr and "--overwrite" in r.stderr, r.stderr
    assert snapshot(a) == before
    train_ok(f"--resume={backup}", "--max_iters=6", "--overwrite")  # asked for: the rewind
    assert checkpoint.load(a / "last.pt")["step"] == 6 and [s for s, _ in losses(a)] == [5, 6]

    # a run written before run ids existed resumes in place, also after a crash before its first save
    legacy = tmp_path / "legacy"
    train_ok(*tiny(small_corpus, legacy, "--max_iters=2", "--eval_interval=2", "--lr_decay_iters=20"))
    old = checkpoint.load(legacy / "last.pt")
    del old["run_id"], old["window"]
    checkpoint.save(legacy / "last.pt", old)
    (legacy / "best.pt").unlink()
    (legacy / "run.json").unlink()
    r = cli("train.py", "--resume", f"--out_dir={legacy}", "--max_iters=4",
            launcher=failing_launcher(tmp_path, "backward"))
    assert r.returncode == 1 and "out of memory" in r.stderr
    r = train_ok("--resume", f"--out_dir={legacy}", "--max_iters=4")
    assert "at step 2" in r.stdout and checkpoint.load(legacy / "last.pt")["run_id"] == run_id(legacy)

    # a continuation into a new directory that died before its first checkpoint: the same command again works
    c = tmp_path / "c"
    r = cli("train.py", f"--resume={backup}", f"--out_dir={c}", "--max_iters=6",
            launcher=failing_launcher(tmp_path, "backward"))
    assert r.returncode == 1 and not (c / "last.pt").exists()
    train_ok(f"--resume={backup}", f"--out_dir={c}", "--max_iters=6")
    assert checkpoint.load(c / "last.pt")["step"] == 6


# 2. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_overwrite_leaves_nothing_of_the_old_run(small_corpus, tmp_path):
    out = tmp_path / "run"
    train_ok(*tiny(small_corpus, out, "--max_iters=6", "--eval_interval=3"))
    old_id = run_id(out)
    assert (out / "best.pt").exists()

    # the new run is stopped before its first evaluation: it has a last.pt, no best.pt
    proc = popen("train.py", *tiny(small_corpus, out, "--max_iters=2000", "--eval_interval=1000", "--overwrite",
                                   "--seed=5"))
    try:
        def new_run_stepped():
            info = rundir.read_info(out)
            lines = (out / "metrics.jsonl").read_text().splitlines() if (out / "metrics.jsonl").exists() else []
            return info is not None and info["run_id"] != old_id and len(lines) >= 3

        wait_for(new_run_stepped, proc, "3 steps of the new run")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143, stderr
    stopped = checkpoint.load(out / "last.pt")
    assert stopped["run_id"] == run_id(out) != old_id
    assert not (out / "best.pt").exists()  # the old run's best.pt is gone with it
    assert all(not r.get("final") for r in metrics(out)) and metrics(out)[0]["step"] == 1
    assert stopped["step"] < 1000

    s = cli("sample.py", "--checkpoint", out / "best.pt", "--max_new_tokens", 5)
    assert s.returncode == 2 and "does not exist" in s.stderr  # no stale model served
    r = train_ok("--resume", f"--out_dir={out}", "--max_iters=" + str(stopped["step"] + 2))
    assert f"resuming from {out / 'last.pt'} at step {stopped['step']}" in r.stdout


# 3. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_training_processes_in_one_out_dir(small_corpus, tmp_path):
    out = tmp_path / "run"
    first = popen("train.py", *tiny(small_corpus, out, "--max_iters=1000000000", "--eval_interval=5",
                                    "--lr_decay_iters=1000"))
    try:
        wait_for(lambda: (out / "last.pt").exists(), first, "the first run's first checkpoint")
        for extra in (["--overwrite"], ["--resume"]):
            args = tiny(small_corpus, out, "--max_iters=10") if extra == ["--overwrite"] else []
            r = cli("train.py", *args, *extra, f"--out_dir={out}")
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            assert "in use by another training process" in r.stderr and str(out) in r.stderr
            assert f"pid {first.pid}" in r.stderr
        assert first.poll() is None  # the first run goes on
        first.send_signal(signal.SIGKILL)  # a killed holder leaves its lock file behind ...
        first.wait(timeout=30)
    finally:
        first.kill()
    assert (out / ".lock").exists()
    # ... which never blocks the next run
    step = checkpoint.load(out / "last.pt")["step"]
    r = train_ok("--resume", f"--out_dir={out}", f"--max_iters={step + 2}")
    assert f"at step {step}" in r.stdout and not (out / ".lock").exists()


# 4. --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("log_interval", [1, 3, 4])
@pytest.mark.parametrize("split_by", ["end_of_run", "sigterm"])
@pytest.mark.slow
def test_metrics_after_a_resume_equal_an_uninterrupted_run(small_corpus, tmp_path, log_interval, split_by):
    """14 steps straight == 7 steps, then --resume to 14: the first part ends as a finished run (max_iters=7),
    or is stopped by SIGTERM after step 7, in the middle of a logging window (sent by the process to
    itself when its 7th step ends; a launcher wraps the step)."""
    args = ["--eval_interval=5", "--lr_decay_iters=14", f"--log_interval={log_interval}", "--dropout=0.1"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_ok(*tiny(small_corpus, straight, *args, "--max_iters=14"))
    if split_by == "end_of_run":
        train_ok(*tiny(small_corpus, split, *args, "--max_iters=7"))
    else:
        body = ("import signal, lm.trainer\noriginal = lm.trainer.train_step\nsteps = []\n"
                "def step(*a, **k):\n    out = original(*a, **k)\n    steps.append(1)\n"
                "    if len(steps) == 7:\n        os.kill(os.getpid(), signal.SIGTERM)\n    return out\n"
                "lm.trainer.train_step = step\n")
        r = cli("train.py", *tiny(small_corpus, split, *args, "--max_iters=14"), launcher=launcher(tmp_path, body))
        assert r.returncode == 143 and "stopped at step 7" in r.stderr, r.stderr
    train_ok("--resume", f"--out_dir={split}", "--max_iters=14")

    def without_timings(out):
        return [{k: v for k, v in r.items() if k not in TIMINGS} for r in metrics(out)]

    assert without_timings(split) == without_timings(straight)
    steps = [r["step"] for r in metrics(straight) if not r.get("final")]
    assert steps == sorted(set(range(log_interval, 15, log_interval)) | {5, 10})


@pytest.mark.slow
def test_metrics_are_rewritten_atomically_on_resume(small_corpus, tmp_path):
    """A resume whose rewrite of metrics.jsonl fails (a real file-size limit, smaller than the file) leaves
    the file as it was: the new contents go to a temporary file that replaces the old one only when whole."""
    out = tmp_path / "run"
    train_ok(*tiny(small_corpus, out, "--max_iters=40", "--eval_interval=20", "--lr_decay_iters=60"))
    before = snapshot(out)
    size = (out / "metrics.jsonl").stat().st_size
    assert size > 4000
    limit = launcher(tmp_path, f"import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, ({size - 500}, "
                               f"{size - 500}))\n")
    r = cli("train.py", "--resume", f"--out_dir={out}", "--max_iters=60", "--eval_interval=30", launcher=limit)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "metrics.jsonl" in r.stderr and "File too large" in r.stderr
    assert snapshot(out) == before


# 5. --------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_exact_resume_with_worker_processes_and_dropout(small_corpus, tmp_path):
    args = ["--num_workers=2", "--dropout=0.2", "--eval_interval=5", "--lr_decay_iters=12"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    train_ok(*tiny(small_corpus, straight, *args, "--max_iters=12"))
    train_ok(*tiny(small_corpus, split, *args, "--max_iters=6"))
    train_ok("--resume", f"--out_dir={split}", "--max_iters=12")
    assert losses(split) == losses(straight)
    assert same_weights(checkpoint.load(straight / "last.pt"), checkpoint.load(split / "last.pt"))


@pytest.mark.slow
def test_ctrl_c_to_the_process_group_with_worker_processes(small_corpus, tmp_path):
    """A terminal's Ctrl-C reaches every process of the group: the workers leave it to the training process,
    which checkpoints at the step boundary and exits 130; --resume matches an uninterrupted run."""
    args = ["--num_workers=2", "--dropout=0.1", "--eval_interval=1000", "--lr_decay_iters=400"]
    out = tmp_path / "run"
    proc = popen("train.py", *tiny(small_corpus, out, *args, "--max_iters=400"), start_new_session=True)
    try:
        wait_for(lambda: (out / "metrics.jsonl").exists() and len(metrics(out)) >= 5, proc, "5 steps")
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130 and "Traceback" not in stderr, stderr
    stopped = checkpoint.load(out / "last.pt")["step"]
    straight = tmp_path / "straight"
    train_ok(*tiny(small_corpus, straight, *args, f"--max_iters={stopped + 3}"))
    train_ok("--resume", f"--out_dir={out}", f"--max_iters={stopped + 3}")
    assert losses(out) == losses(straight)


# 6. --------------------------------------------------------------------------------------------------------

def read_only(path):
    """Make path read-only for the child process; as root (which ignores permission bits), also drop the
    capabilities that bypass them, in the child only (setpriv, from util-linux)."""
    path.chmod(0o555)
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    assert setpriv, "running as root: setpriv (util-linux) is needed to drop CAP_DAC_OVERRIDE in the child"
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner,-linux_immutable", "--"]


@pytest.mark.parametrize("case", ["under_a_file", "read_only_fresh", "read_only_resume", "disk_full"])
@pytest.mark.slow
def test_unwritable_out_dir_is_a_clear_error_and_loses_nothing(small_corpus, tmp_path, case):
    out = tmp_path / "run"
    prefix, env_launcher = [], None
    if case == "under_a_file":
        (tmp_path / "afile").write_text("not a directory")
        target = tmp_path / "afile" / "run"
        args = tiny(small_corpus, target, "--max_iters=2")
        named = str(tmp_path / "afile")
    else:
        train_ok(*tiny(small_corpus, out, "--max_iters=4", "--eval_interval=2", "--lr_decay_iters=20"))
        before = checkpoints(out)
        if case == "read_only_fresh":
            args = tiny(small_corpus, out, "--max_iters=2", "--overwrite")
            prefix = read_only(out)
        elif case == "read_only_resume":
            args = ["--resume", f"--out_dir={out}", "--max_iters=8"]
            prefix = read_only(out)
        else:  # a real file-size limit: the metrics lines fit, the checkpoint does not
            size = (out / "last.pt").stat().st_size
            env_launcher = launcher(tmp_path, f"import resource\nresource.setrlimit(resource.RLIMIT_FSIZE, "
                                              f"({size // 2}, {size // 2}))\n")
            args = ["--resume", f"--out_dir={out}", "--max_iters=8"]
        named = str(out)
    cmd = [*prefix, sys.executable, *([str(env_launcher)] if env_launcher else []), str(ROOT / "train.py"), *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    try:
        assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
        assert "error: cannot write" in r.stderr and named in r.stderr, r.stderr
        if case == "disk_full":
            assert "File too large" in r.stderr and "the previous last.pt is intact" in r.stderr
        if case != "under_a_file":
            assert checkpoints(out) == before
    finally:
        if out.exists():
            out.chmod(0o755)
    if case != "under_a_file":
        r = train_ok("--resume", f"--out_dir={out}", "--max_iters=8")
        assert "at step 4" in r.stdout and checkpoint.load(out / "last.pt")["step"] == 8


# 7. --------------------------------------------------------------------------------------------------------

# An allocation failure at one exact place, with the exception each device really raises there
# (CPU: RuntimeError "can't allocate memory"; CUDA: torch.OutOfMemoryError; Python: MemoryError).
CPU_OOM = ("RuntimeError('[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can\\'t allocate "
           "memory: you tried to allocate 4294967296 bytes. Error code 12 (Cannot allocate memory)')")
FAIL_AT = {
    "forward": ("lm.nn.GPT", "forward", CPU_OOM),
    "backward": ("torch.Tensor", "backward", CPU_OOM),
    "optimizer_first_step": ("torch.optim.AdamW", "step", "torch.OutOfMemoryError('CUDA out of memory. Tried to "
                                                          "allocate 2.00 GiB')"),
    "moving_to_device": ("torch.nn.Module", "to", "torch.OutOfMemoryError('CUDA out of memory. Tried to allocate "
                                                  "20.00 MiB')"),
    "saving": ("torch", "save", "MemoryError()"),
}


def failing_launcher(tmp_path, phase):
    owner, name, error = FAIL_AT[phase]
    return launcher(tmp_path, f"import torch, lm.nn\nowner = {owner}\n"
                              f"def failing(*args, **kwargs):\n    raise {error}\n"
                              f"setattr(owner, {name!r}, failing)\n")


@pytest.mark.parametrize("phase", list(FAIL_AT))
@pytest.mark.slow
def test_out_of_memory_anywhere_in_a_step_is_explained(small_corpus, tmp_path, phase):
    out = tmp_path / "run"
    train_ok(*tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2", "--lr_decay_iters=20"))
    before = checkpoints(out)
    if phase == "optimizer_first_step":  # the step that allocates the optimizer's state: a fresh run's first
        args = tiny(small_corpus, tmp_path / "fresh", "--max_iters=4")
    else:
        args = ["--resume", f"--out_dir={out}", "--max_iters=6"]
    r = cli("train.py", *args, launcher=failing_launcher(tmp_path, phase))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "error: out of memory" in r.stderr and "--batch_size=2 --grad_accum=2" in r.stderr, r.stderr
    assert checkpoints(out) == before
    if phase == "optimizer_first_step":
        assert "at training step 1" in r.stderr and not (tmp_path / "fresh" / "last.pt").exists()


# 9. --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
@pytest.mark.parametrize("phase", ["data_preparation", "final_evaluation"])
@pytest.mark.slow
def test_signal_between_phases_exits_non_zero_and_resume_continues(small_corpus, tmp_path, sig, code, phase):
    """The signal is sent by the process to itself at the start of the phase (a launcher wraps the phase's
    function), exactly as a user's Ctrl-C or kill would arrive then."""
    out = tmp_path / "run"
    train_ok(*tiny(small_corpus, out, "--max_iters=4", "--eval_interval=2", "--lr_decay_iters=8"))
    target = "lm.jobs.prepare_corpus" if phase == "data_preparation" else "lm.jobs.LanguageModelJob.final"
    owner, name = target.rsplit(".", 1)
    body = (f"import signal, lm.jobs\nowner = {owner}\noriginal = getattr(owner, {name!r})\n"
            f"def signalled(*args, **kwargs):\n    os.kill(os.getpid(), {int(sig)})\n"
            f"    return original(*args, **kwargs)\n"
            f"setattr(owner, {name!r}, signalled)\n")
    before = checkpoints(out)
    r = cli("train.py", "--resume", f"--out_dir={out}", "--max_iters=6", launcher=launcher(tmp_path, body))
    assert r.returncode == code and "Traceback" not in r.stderr, r.stderr
    assert "interrupted:" in r.stderr
    if phase == "data_preparation":
        assert checkpoints(out) == before and "during data preparation" in r.stderr
    else:
        assert checkpoint.load(out / "last.pt")["step"] == 6 and "final evaluation" in r.stderr
    assert not [rec for rec in metrics(out) if rec["step"] > 4 and rec.get("final")]
    r = train_ok("--resume", f"--out_dir={out}", "--max_iters=6")
    assert metrics(out)[-1]["final"] and metrics(out)[-1]["step"] == 6


# 10. -------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_overrides_are_checked_against_the_checkpoint_which_is_read_once(small_corpus, tmp_path):
    out = tmp_path / "run"
    train_ok(*tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2", "--lr=0.01", "--min_lr=0.001",
                   "--lr_decay_iters=10"))
    # 0.005 is below the checkpoint's lr (0.01) but above the default lr (0.002)
    counting = launcher(tmp_path, "import atexit, torch\nreads = []\noriginal = torch.load\n"
                                  "def load(f, *a, **k):\n    reads.append(str(f))\n    return original(f, *a, **k)\n"
                                  "torch.load = load\n"
                                  "atexit.register(lambda: print('checkpoint reads:', reads, file=sys.stderr))\n")
    r = cli("train.py", "--resume", f"--out_dir={out}", "--min_lr=0.005", "--max_iters=4", launcher=counting)
    assert r.returncode == 0, r.stderr
    assert "train.min_lr: 0.001 -> 0.005" in r.stdout
    assert f"checkpoint reads: [{str(out / 'last.pt')!r}]" in r.stderr  # one read, of one file
    r = cli("train.py", "--resume", f"--out_dir={out}", "--min_lr=0.02", "--max_iters=6")
    assert r.returncode == 2 and "min_lr: 0.02 is not allowed; it must be between 0 and lr (0.01)" in r.stderr


# 13. -------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_non_finite_gradients_with_a_finite_loss_never_update_the_weights(small_corpus, tmp_path):
    """A backward hook turns one gradient to inf at the third step (the loss stays finite); the
    launcher counts optimizer updates."""
    out = tmp_path / "run"
    body = ("import atexit, torch, lm.trainer\nupdates = []\noriginal_step = torch.optim.AdamW.step\n"
            "def step(self, *a, **k):\n    updates.append(1)\n    return original_step(self, *a, **k)\n"
            "torch.optim.AdamW.step = step\n"
            "original_make = lm.trainer.make_model\nbackwards = []\n"
            "def make_model(cfg):\n    model = original_make(cfg)\n"
            "    def hook(grad):\n        backwards.append(1)\n"
            "        return grad * float('inf') if len(backwards) == 3 else grad\n"
            "    model.embed.tok.weight.register_hook(hook)\n    return model\n"
            "lm.trainer.make_model = make_model\n"
            "atexit.register(lambda: print('optimizer updates:', len(updates), file=sys.stderr))\n")
    r = cli("train.py", *tiny(small_corpus, out, "--max_iters=10", "--eval_interval=2", "--grad_clip=0"),
            launcher=launcher(tmp_path, body))
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "gradients became non-finite" in r.stderr and "at step 3" in r.stderr
    assert "optimizer updates: 2" in r.stderr
    last = checkpoint.load(out / "last.pt")
    assert last["step"] == 2 and all_finite(last)


# 14. -------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_every_seed_gives_its_own_data_order(small_corpus, tmp_path):
    from lm.data.corpus import prepare_corpus

    ids = prepare_corpus(small_corpus, tmp_path / "cache", 0.1, 16).train
    firsts = {tuple(window_batch(ids, 4, 16, seed, 0)[0].flatten().tolist()) for seed in range(300)}
    assert len(firsts) == 300
    for seed in (-1, -2, 2**63):
        r = cli("train.py", *tiny(small_corpus, tmp_path / "o", f"--seed={seed}"))
        assert r.returncode == 2 and f"seed: {seed} is not allowed" in r.stderr and "0 .. " in r.stderr
    assert not (tmp_path / "o").exists()


# 15. -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args,needle", [
    (["--warmup_iters=100", "--lr_decay_iters=50"], "lr_decay_iters: 50 is not allowed; the cosine decay must end "
                                                    "after the warm-up: it must be > warmup_iters (100)"),
    (["--warmup_iters=100", "--lr_decay_iters=100"], "it must be > warmup_iters (100)"),
    (["--lr_schedule=noam", "--lr_decay_iters=500"], "lr_schedule noam decays as 1/sqrt(step)"),
    (["--lr=0.001", "--min_lr=0.01"], "min_lr: 0.01 is not allowed; it must be between 0 and lr (0.001)"),
])
@pytest.mark.slow
def test_contradictory_schedule_settings_are_refused(small_corpus, tmp_path, args, needle):
    r = cli("train.py", *tiny(small_corpus, tmp_path / "o", *args))
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr, r.stderr


# 19. -------------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_no_config_is_the_shipped_config(small_corpus, tmp_path):
    assert config.load(None) == config.load(ROOT / "config.yaml")
    for overrides in (["--epochs=3"], ["--max_iters=50"], ["--epochs=2", "--max_iters=7"], ["--block_size=32"]):
        assert config.load(None, overrides) == config.load(ROOT / "config.yaml", overrides), overrides
    shared = [f"--data_path={small_corpus}", "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--device=cpu"]
    plain, shipped = tmp_path / "plain", tmp_path / "shipped"
    r = train_ok(*shared, f"--out_dir={plain}", cwd=tmp_path)
    assert "2 steps of batch 64 x 1" in r.stdout
    train_ok("--config", ROOT / "config.yaml", *shared, f"--out_dir={shipped}", cwd=tmp_path)
    a, b = checkpoint.load(plain / "last.pt"), checkpoint.load(shipped / "last.pt")
    assert {**a["config"], "train": {**a["config"]["train"], "out_dir": None}} == \
           {**b["config"], "train": {**b["config"]["train"], "out_dir": None}}
    assert same_weights(a, b) and losses(plain) == losses(shipped)


# 20. -------------------------------------------------------------------------------------------------------

def read_to_the_end(fd, proc, what, limit=TIMEOUT):
    """Everything read from fd until its last writer closes it (end of file; EIO on a pty); fail after limit
    seconds in all, killing proc, with what was awaited and the output so far."""
    deadline, seen = time.monotonic() + limit, b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            proc.kill()
            raise AssertionError(f"timed out after {limit:.0f} s waiting for {what}; the output so far: "
                                 f"{seen.decode(errors='replace')[-3000:]!r}")
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the pty's other side is closed
            return seen
        if not chunk:
            return seen
        seen += chunk


@pytest.mark.slow
def test_progress_is_plain_lines_off_a_terminal_and_a_bar_on_one(small_corpus, tmp_path):
    """Off a terminal, a plain line at each tenth of a 40-step run (steps 4, 8, ..., 40) and besides those
    only the first step's and one per 30 s of the run, on a machine of any speed: never one per step. On a
    terminal, the tqdm bar redrawn in place."""
    started = time.monotonic()
    r = train_ok(*tiny(small_corpus, tmp_path / "log", "--max_iters=40", "--eval_interval=20"))
    took = time.monotonic() - started  # at least the run's own time
    assert "\r" not in r.stderr and "\r" not in r.stdout
    lines = [line for line in r.stderr.splitlines() if line.startswith("train: step ")]
    steps = [int(line.split()[2].split("/")[0]) for line in lines]
    assert steps == sorted(set(steps)) and set(range(4, 41, 4)) <= set(steps), r.stderr
    assert len(steps) - 10 <= 1 + took // 30, (took, r.stderr)  # the lines besides the tenths
    assert lines[-1].startswith("train: step 40/40 (100%), loss ")

    import fcntl, pty, struct, termios  # noqa: E401 (POSIX terminals)

    leader, follower = pty.openpty()  # a terminal (80 columns): the tqdm bar, redrawn in place
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"),
                             *tiny(small_corpus, tmp_path / "tty", "--max_iters=40", "--eval_interval=20")],
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    try:
        seen = read_to_the_end(leader, proc, "the run on a terminal to end")
        proc.wait(timeout=60)
    finally:
        proc.kill()
        os.close(leader)
    assert proc.returncode == 0, seen
    assert b"\r" in seen and b"40/40" in seen and b"train: step " not in seen


# the command-line test-suite items -------------------------------------------------------------------------

@pytest.mark.parametrize("name,value", [
    ("data_path", "some/file.txt"), ("out_dir", "elsewhere/run"), ("max_iters", 77), ("epochs", 0.5),
    ("batch_size", 3), ("block_size", 48), ("lr", 0.0123), ("eval_interval", 33), ("log_interval", 7),
    ("seed", 99), ("num_blocks", 3), ("num_heads", 8), ("embedding_dim", 256), ("dropout", 0.25),
    ("device", "cpu"),
])
@pytest.mark.parametrize("form", ["--name=value", "--name value", "--section.name=value"])
def test_required_bare_names_are_overridable(name, value, form):
    section = config.FIELD_SECTION[name]
    assert getattr(getattr(config.Config(), section), name) != value  # the override changes something
    argv = {"--name=value": [f"--{name}={value}"], "--name value": [f"--{name}", str(value)],
            "--section.name=value": [f"--{section}.{name}={value}"]}[form]
    cfg, point = train_cli.load_config(train_cli.parse_args(argv))
    assert getattr(getattr(cfg, section), name) == value and point is None
