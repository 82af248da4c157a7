"""Training by the clock (train.max_time): the stop, the schedule over the time fraction, resume, config, CLI.

Every test but the end-to-end one replaces the trainer's clock (lm.trainer.clock) with a fake one that
advances only when a training step ends, by a set duration: the results do not depend on the machine.
"""

import io
import math

import pytest

import train as train_cli
from conftest import ROOT
from helpers import cli, metrics, tiny
from lm import checkpoint, config, trainer
from lm.trainer import Interrupted, lr_at, total_steps, train


@pytest.fixture(autouse=True)
def _threads(one_thread):
    yield


class FakeClock:
    """lm.trainer's clock, standing still but for the end of each training step, which takes
    durations[i % len(durations)] seconds (i: the steps so far). More than 100 steps fail the test."""

    def __init__(self):
        self.now, self.steps, self.durations = 1000.0, 0, [1.0]

    def __call__(self) -> float:
        return self.now

    def step_done(self) -> None:
        self.now += self.durations[self.steps % len(self.durations)]
        self.steps += 1
        if self.steps > 100:  # every run here ends within seconds of fake time: a run past it never stops
            raise AssertionError(f"the run went on for {self.steps} steps, {self.now - 1000.0} s, past its budget")


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    real_step = trainer.train_step

    def timed_step(run, batches, lr):
        out = real_step(run, batches, lr)
        fake.step_done()
        return out

    monkeypatch.setattr(trainer, "train_step", timed_step)
    monkeypatch.setattr(trainer, "clock", fake)
    return fake


def tiny_cfg(corpus, out_dir, *extra):
    return config.load(None, [f"--data_path={corpus}", f"--out_dir={out_dir}", "--block_size=16",
                              "--batch_size=4", "--num_blocks=1", "--num_heads=2", "--embedding_dim=16",
                              "--eval_iters=1", "--log_interval=1", "--eval_interval=4", "--device=cpu",
                              "--warmup_iters=2", "--lr=1.0", "--min_lr=0.1", *extra])


class Events:
    """on_event: the (step, lr, elapsed_s) of every step event, and every event."""

    def __init__(self):
        self.all, self.steps = [], []

    def __call__(self, e):
        self.all.append(e)
        if e["event"] == "step":
            self.steps.append((e["step"], e["lr"], e["elapsed_s"]))


def expected_lr(step, elapsed, schedule, max_time, decay_fraction=0.2, lr=1.0, min_lr=0.1, warmup=2):
    """The closed form: warm-up in steps, then cosine or wsd over the fraction of the budget used."""
    if step < warmup:
        return lr * (step + 1) / warmup
    f = min(1.0, elapsed / max_time)
    if schedule == "wsd":
        return min_lr + (lr - min_lr) * min(1.0, (1.0 - f) / decay_fraction)
    return min_lr + (lr - min_lr) * (1.0 + math.cos(math.pi * f)) / 2


def step_records(out_dir):
    return [r for r in metrics(out_dir) if not r.get("final")]


# ----------------------------------------------------------------------------- (a) the stop

def test_the_run_stops_at_the_first_step_that_reaches_the_budget(clock, small_corpus, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_cfg(small_corpus, out, "--max_time=10"))
    rows = step_records(out)
    assert [r["step"] for r in rows] == list(range(1, 11))  # 1 s steps, 10 s: exactly 10 steps
    assert [r["elapsed_s"] for r in rows] == [float(s) for s in range(1, 11)]
    final = metrics(out)[-1]
    assert final["final"] is True and final["step"] == 10 and final["elapsed_s"] >= 10
    assert "final_val_loss" in final
    assert checkpoint.load(out / "last.pt")["step"] == 10 and summary["total_steps"] == 10


def test_a_budget_between_steps_ends_after_the_step_that_crosses_it(clock, small_corpus, tmp_path):
    clock.durations = [1.0, 3.0]  # elapsed after each step: 1, 4, 5, 8, 9, 12
    out = tmp_path / "run"
    train(tiny_cfg(small_corpus, out, "--max_time=10"))
    rows = step_records(out)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["elapsed_s"] == 12.0 and rows[-2]["elapsed_s"] < 10


@pytest.mark.parametrize("max_iters,steps", [(4, 4), (30, 10)])
def test_with_max_iters_in_the_same_layer_whichever_comes_first_ends_the_run(clock, small_corpus, tmp_path,
                                                                               max_iters, steps):
    out = tmp_path / "run"
    cfg = tiny_cfg(small_corpus, out, "--max_time=10", f"--max_iters={max_iters}")
    assert (cfg.train.max_time, cfg.train.max_iters) == (10.0, max_iters)
    events = Events()
    train(cfg, on_event=events)
    assert [s for s, _, _ in events.steps] == list(range(1, steps + 1))
    # the schedule follows the time even when max_iters ends the run first
    for (step, lr, elapsed) in events.steps:
        assert lr == pytest.approx(expected_lr(step - 1, elapsed - 1.0, "cosine", 10.0))
    assert metrics(out)[-1]["step"] == steps


def test_epochs_and_max_time_together_stop_at_the_first(clock, small_corpus, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(small_corpus, out, "--max_time=1000", "--epochs=0.002")
    assert cfg.train.max_iters is None and total_steps(cfg, 4500.0) == 9  # 0.002 epochs of 4,500 steps
    assert total_steps(config.load(None, ["--max_time=5"]), 4500.0) is None  # by the clock alone: no step limit
    train(cfg)
    steps = checkpoint.load(out / "last.pt")["step"]
    assert step_records(out)[-1]["step"] == steps and 1 <= steps < 20  # by epochs, long before 1,000 s


# ----------------------------------------------------------------------------- (b) the schedule

@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_the_lr_follows_the_fraction_of_the_budget_used(clock, small_corpus, tmp_path, schedule):
    clock.durations = [1.0, 3.0]  # uneven steps: the fraction of time differs from the fraction of steps
    events = Events()
    cfg = tiny_cfg(small_corpus, tmp_path / "run", "--max_time=10", f"--lr_schedule={schedule}",
                   "--decay_fraction=0.5")
    train(cfg, on_event=events)
    before = [0.0, 1.0, 4.0, 5.0, 8.0, 9.0]  # training seconds before steps 0..5
    assert [(s, e) for s, _, e in events.steps] == [(i + 1, b + d) for i, (b, d) in
                                                    enumerate(zip(before, [1, 3] * 3))]
    for i, (_, lr, _) in enumerate(events.steps):
        assert lr == pytest.approx(expected_lr(i, before[i], schedule, 10.0, decay_fraction=0.5)), i
        assert lr == lr_at(i, cfg, None, before[i])
    assert events.steps[0][1] == pytest.approx(0.5) and events.steps[1][1] == pytest.approx(1.0)  # warm-up
    if schedule == "cosine":
        assert events.steps[2][1] == pytest.approx(0.1 + 0.9 * (1 + math.cos(0.4 * math.pi)) / 2)
    else:  # stable until the last half of the time, then linear: 8 s of 10 leaves 0.2 / 0.5 of the way
        assert events.steps[3][1] == pytest.approx(1.0) and events.steps[4][1] == pytest.approx(0.1 + 0.9 * 0.4)
    lrs_in_metrics = [r["lr"] for r in step_records(tmp_path / "run")]
    assert lrs_in_metrics == [lr for _, lr, _ in events.steps]


@pytest.mark.parametrize("schedule", ["cosine", "wsd"])
def test_the_schedule_ends_at_min_lr_at_the_budget(schedule):
    cfg = config.load(None, ["--lr=1.0", "--min_lr=0.1", "--warmup_iters=10", "--max_time=600",
                             f"--lr_schedule={schedule}"])
    assert lr_at(5, cfg, None, 0.0) == pytest.approx(0.6)  # the warm-up is in steps, whatever the time
    assert lr_at(11, cfg, None, 0.0) == pytest.approx(1.0)
    assert lr_at(500, cfg, None, 600.0) == pytest.approx(0.1)  # at the budget: min_lr
    assert lr_at(500, cfg, None, 700.0) == pytest.approx(0.1)  # past it (the last step's end): still min_lr
    assert lr_at(50, cfg, None, 300.0) == pytest.approx(0.55 if schedule == "cosine" else 1.0)
    assert lr_at(50, cfg, None, 300.0) == lr_at(5000, cfg, 10, 300.0)  # the step count plays no part
    times = [lr_at(100, cfg, None, s) for s in range(0, 601, 10)]
    assert all(a >= b for a, b in zip(times, times[1:])) and times[0] > times[-1]


def test_noam_is_the_same_by_the_clock():
    steps = config.load(None, ["--lr_schedule=noam", "--warmup_iters=100"])
    clock_cfg = config.load(None, ["--lr_schedule=noam", "--warmup_iters=100", "--max_time=60"])
    assert [lr_at(s, clock_cfg, None, s * 1.0) for s in range(0, 400, 7)] == \
           [lr_at(s, steps, 1000) for s in range(0, 400, 7)]


# ----------------------------------------------------------------------------- (c) resume

@pytest.mark.slow
def test_resume_continues_from_the_saved_time_with_the_remaining_budget(clock, small_corpus, tmp_path):
    straight_events = Events()
    train(tiny_cfg(small_corpus, tmp_path / "straight", "--max_time=10"), on_event=straight_events)

    out = tmp_path / "split"
    first = Events()
    with pytest.raises(Interrupted):
        train(tiny_cfg(small_corpus, out, "--max_time=10"), on_event=first,
              should_stop=lambda: bool(first.steps) and first.steps[-1][0] >= 4)
    saved = checkpoint.load(out / "last.pt")
    assert saved["step"] == 4 and saved["elapsed_s"] == 4.0
    clock.now += 500.0  # the clock of a later process: only durations count
    second = Events()
    train(tiny_cfg(small_corpus, out, "--max_time=10"), resume=checkpoint.resume_point(True, out), on_event=second)
    assert [s for s, _, _ in second.steps] == [5, 6, 7, 8, 9, 10]  # the remaining 6 s of the budget
    for step, lr, elapsed in second.steps:  # the schedule goes on from the saved fraction, 4 / 10
        assert elapsed == float(step)
        assert lr == pytest.approx(expected_lr(step - 1, elapsed - 1.0, "cosine", 10.0))
    assert [lr for _, lr, _ in first.steps + second.steps] == [lr for _, lr, _ in straight_events.steps]
    final = metrics(out)[-1]
    assert final["final"] and final["step"] == 10 and final["elapsed_s"] >= 10
    start = next(e for e in second.all if e["event"] == "start")
    assert start["max_time"] == 10.0 and start["start_elapsed"] == 4.0 and start["total_steps"] is None


def test_a_run_past_its_budget_resumes_to_its_final_evaluation_without_steps(clock, small_corpus, tmp_path):
    out = tmp_path / "run"
    first = Events()
    with pytest.raises(Interrupted, match="before the final evaluation"):  # stopped after the last step
        train(tiny_cfg(small_corpus, out, "--max_time=10"), on_event=first,
              should_stop=lambda: bool(first.steps) and first.steps[-1][0] >= 10)
    assert checkpoint.load(out / "last.pt")["step"] == 10
    assert not any(r.get("final") for r in metrics(out))
    again = Events()
    summary = train(tiny_cfg(small_corpus, out, "--max_time=10"), resume=checkpoint.resume_point(True, out),
                    on_event=again)
    assert again.steps == [] and clock.steps == 10
    final = metrics(out)[-1]
    assert final["final"] and final["step"] == 10 and final["elapsed_s"] == 10.0
    assert summary["final_val_loss"] == final["final_val_loss"]


# ----------------------------------------------------------------------------- (d) config

def test_max_time_on_the_command_line_replaces_the_files_run_length(tmp_path):
    cfg = config.load(ROOT / "config.yaml", ["--max_time=30"])
    assert (cfg.train.max_time, cfg.train.max_iters, cfg.train.epochs) == (30.0, None, None)
    assert config.load(ROOT / "config.yaml").train.max_time is None  # the shipped default: by steps
    timed = tmp_path / "timed.yaml"
    timed.write_text("train:\n  max_time: 60\n  max_iters: 500\n")
    cfg = config.load(timed)
    assert (cfg.train.max_time, cfg.train.max_iters) == (60.0, 500)  # the same layer: both, the first wins
    for override, expected in (("--max_iters=50", (None, 50, None)), ("--epochs=2", (None, None, 2.0)),
                               ("--max_time=5", (5.0, None, None))):
        t = config.load(timed, [override]).train
        assert (t.max_time, t.max_iters, t.epochs) == expected, override


@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_max_time_must_be_a_positive_number(value):
    with pytest.raises(config.ConfigError, match="max_time"):
        config.load(None, [f"--max_time={value}"])


def test_lr_decay_iters_contradicts_max_time():
    with pytest.raises(config.ConfigError, match=r"lr_decay_iters: 500 .*max_time \(60.0 s\).*max_iters"):
        config.load(None, ["--max_time=60", "--lr_decay_iters=500"])
    config.load(None, ["--max_time=60", "--lr_schedule=noam"])  # noam has no end: fine


def test_a_seq2seq_task_may_run_by_the_clock(clock, tmp_path):
    cfg = config.load(None, ["--task=copy", "--max_time=3", f"--out_dir={tmp_path / 'copy'}", "--device=cpu",
                             "--max_len=4", "--eval_long_len=5", "--held_out_size=8", "--embedding_dim=16",
                             "--num_heads=2", "--num_blocks=1", "--batch_size=4", "--eval_iters=1",
                             "--eval_interval=100"])
    assert cfg.train.max_iters is None and cfg.train.max_time == 3.0
    train(cfg)
    assert checkpoint.load(tmp_path / "copy" / "last.pt")["step"] == 3
    with pytest.raises(config.ConfigError, match="max_iters .* or max_time"):
        config.load(None, ["--task=copy", "--max_iters=null"])


def test_the_ten_minute_config_runs_by_the_clock():
    t = config.load(ROOT / "configs" / "shakespeare_char_10min.yaml").train
    assert (t.max_time, t.max_iters, t.epochs) == (600.0, None, None)


# ----------------------------------------------------------------------------- progress display

def start_event(max_time, total=None, start_elapsed=0.0):
    return {"event": "start", "params": 1000, "flops_per_token": 6000, "device": "cpu", "dtype": "float32",
            "dtype_reason": "test", "compiled": False, "world_size": 1, "total_steps": total, "start_step": 0,
            "max_time": max_time, "start_elapsed": start_elapsed, "run_id": "x",
            "config": {"train": {"batch_size": 4, "grad_accum": 1}}}


def feed(console, seconds_per_step, steps):
    for s in range(1, steps + 1):
        console({"event": "step", "step": s, "loss": 1.0, "lr": 1e-3, "elapsed_s": s * seconds_per_step})
        console({"event": "log", "step": s, "train_loss": 1.0, "lr": 1e-3, "tokens_per_sec": 100.0,
                 "elapsed_s": s * seconds_per_step})


def test_progress_off_a_terminal_counts_seconds_of_the_budget(capsys):
    stream = io.StringIO()
    console = train_cli.Console(stream)
    console(start_event(600.0))
    assert "training for 600 s of training time (evaluation excluded)" in capsys.readouterr().out
    feed(console, 6.0, 100)  # 6 s steps: a tenth every 10 steps
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12, lines  # one a tenth (and the first), not one a step
    assert lines[1].startswith("train: 60/600 s (10%), step 10, loss 1.0000")
    assert lines[-1].startswith("train: 600/600 s (100%), step 100, ")


def test_progress_bar_on_a_terminal_counts_seconds_of_the_budget(capsys):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    console = train_cli.Console(stream)
    console(start_event(600.0, total=5000))
    assert "(evaluation excluded; or at most 5000 steps)" in capsys.readouterr().out
    feed(console, 12.3, 10)
    assert console.bar.n == pytest.approx(123.0)
    console.close()
    assert "123/600 s" in stream.getvalue()


# ----------------------------------------------------------------------------- (e) train.py, real clock

@pytest.mark.slow
def test_train_py_by_the_clock_ends_and_writes_its_final_record(small_corpus, tmp_path):
    out = tmp_path / "cli"
    r = cli("train.py", *tiny(small_corpus, out, "--max_time=2", "--log_interval=5", "--eval_interval=100000"))
    assert r.returncode == 0, r.stderr
    assert "training for 2 s of training time" in r.stdout
    final = metrics(out)[-1]
    assert final["final"] is True and final["elapsed_s"] >= 2.0 and "final_val_loss" in final
