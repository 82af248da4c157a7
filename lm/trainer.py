"""The training loop, and the pieces it is made of.

``train(cfg)`` runs a whole job (language modelling or a seq2seq task, see ``lm.jobs``): it
prepares the data, builds (or restores) the model and optimizer, trains (for a number of steps or
epochs, or by the clock for max_time seconds) with a warm-up + cosine (or Noam, or WSD) learning
rate, gradient accumulation and clipping, evaluates (showing examples of the model's predictions), writes
``metrics.jsonl``, ``loss.png``, checkpoints (and those kept over time, ``keep_every``) and, with ``logger:
tensorboard``, TensorBoard events, and ends with a final evaluation. It prints nothing:
progress goes to the ``on_event`` callback that the calling script owns.

The file reads from the top down: ``train``; ``Trainer``, which holds what every phase needs (the
processes, the event callback, the stop request) and runs the phases in order (restore, the steps
with their evaluations and checkpoints, finish); the data preparation; ``Run``, the state that a
checkpoint saves; ``train_step``, one optimizer step; then the small parts: the clock, the learning
rate schedule and the run's length, the metrics file, out-of-memory errors. Which checkpoint to resume
and what may change since it was written is ``lm.checkpoint``'s.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint as ckpt_io
from . import rundir
from .answers import example_line
from .checkpoint import ResumePoint, check_resume_config, check_resume_vocab
from .config import Config, ConfigError
from .data.corpus import PreparationStopped
from .device import autocast, choose_dtype, resolve_device
from .distributed import World
from .files import remove_stale_temporaries, write_text_atomic
from .jobs import Job, make_job
from .logger import TensorBoardLog
from .nn import make_model
from .optim import make_optimizer
from .rundir import OutputError, RunLock, write_failure

Event = Callable[[dict], None]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says what happened and what to try."""


class Interrupted(Exception):
    """Training stopped on request (should_stop): at a step boundary after writing last.pt, or between
    phases (data preparation, final evaluation) with the checkpoints as they were."""

    def __init__(self, step: int, message: str):
        super().__init__(message)
        self.step = step


def train(cfg: Config, *, resume: ResumePoint | None = None, overwrite: bool = False,
          on_event: Event | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train as configured (see the module docstring); returns a summary dict.

    resume: the checkpoint to continue, already read (lm.checkpoint.resume_point reads the one a
    script's --resume or --resume=PATH asks for). One of out_dir's own checkpoints continues the run
    there; one from elsewhere is continued into out_dir as a new run. overwrite: a fresh run replaces
    the run in out_dir (otherwise refused); resuming a checkpoint from elsewhere, the continuation
    replaces another run in out_dir. should_stop: polled after every step and between phases; when it
    returns True, last.pt covers the latest completed step and Interrupted is raised.

    Started by torchrun (WORLD_SIZE > 1), every process runs this function: they train data-parallel
    (lm.distributed), and only the main one (rank 0) reports on_event and writes out_dir.
    """
    if resume is not None and not isinstance(resume, ResumePoint):
        raise TypeError(f"resume: a ResumePoint (see lm.checkpoint.resume_point) or None, not {resume!r}")
    world = _join_world(cfg)
    try:
        summary = Trainer(cfg, world, on_event, should_stop).train(resume, overwrite)
    except Interrupted:
        world.close()  # every process stopped at the same point
        raise
    except BaseException:
        world.close(together=False)
        raise
    world.close()
    return summary


def _join_world(cfg: Config) -> World:
    """The processes of this run (lm.distributed), once grad_accum is known to be shared out evenly."""
    n, accum = World.size_in_environment(), cfg.train.grad_accum
    if accum % n:
        raise ConfigError(f"grad_accum: {accum} micro-batches per step cannot be shared by {n} processes; it "
                          f"counts the micro-batches of a step across all processes (batch_size is per process), "
                          f"so it must be a multiple of {n}, e.g. --grad_accum={n * math.ceil(accum / n)}")
    return World.from_environment(resolve_device(cfg.train.device).type)


def _ignore(event: dict) -> None:
    """The event callback where no one listens: no on_event, or any process but the main one."""


def _never() -> bool:
    """The stop request of a caller that never asks to stop."""
    return False


# ----------------------------------------------------------------------------- the phases of a run

class Trainer:
    """One process's part of a training run: what every phase needs (the config, the processes, out_dir,
    the event callback and the stop request), and the phases, in the order they run. From the restore
    phase on it also holds the run's state (run) and, from the steps on, its metrics file (metrics).

    Only the main process reports events: the others get a callback that ignores them. A stop is asked
    through stop_asked, a collective that every process calls at the same points, so that a stop asked
    of any process (SIGTERM, Ctrl-C) stops them all at the same point.
    """

    run: Run
    metrics: MetricsLog
    board: TensorBoardLog | None

    def __init__(self, cfg: Config, world: World, on_event: Event | None = None,
                 should_stop: Callable[[], bool] | None = None):
        self.cfg, self.world, self.out_dir = cfg, world, Path(cfg.train.out_dir)
        self.emit: Event = on_event if on_event is not None and world.is_main else _ignore
        self.should_stop = should_stop if should_stop is not None else _never

    def train(self, point: ResumePoint | None, overwrite: bool) -> dict:
        """The whole run: restore (the checkpoint's model is checked against the config before anything
        is touched), the steps, then finish. A resumed run already at its end (e.g. stopped after its
        last step) goes from restore straight to finish."""
        if point:
            check_resume_config(point.ckpt["config"], self.cfg)
        with RunLock(self.out_dir) if self.world.is_main else contextlib.nullcontext():
            self.run = self.restore(point, overwrite)
            # the run's length: n_steps (None: no step limit) and, by the clock, max_time seconds of training
            n_steps = total_steps(self.cfg, self.run.job.steps_per_epoch())
            self.announce(n_steps)
            self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", self.run.step if point else None,
                                      writes=self.world.is_main)
            self.board = None  # the TensorBoard events (logger: tensorboard), main process only
            if self.cfg.train.logger == "tensorboard" and self.world.is_main:
                self.board = TensorBoardLog(self.out_dir, self.run.step if point else None)
                self.board.hparams(self.cfg.to_dict(), self.cfg.data.task)
            try:
                self.steps(n_steps)
                return self.finish(n_steps)
            finally:
                if self.board is not None:
                    self.board.close()

    def stop_asked(self) -> bool:
        """should_stop() on any process (a collective: every process asks at the same points)."""
        return self.world.any(self.should_stop())

    # --- restore

    def restore(self, point: ResumePoint | None, overwrite: bool) -> Run:
        """out_dir claimed for this run (main process), the data prepared (the corpus encoded once into a
        cache in out_dir by the main process before the others read it, or the task's generator), the
        model and optimizer built and, resuming, given the checkpoint's state. Only then, everything that
        could refuse the run having passed, does out_dir become its home (--overwrite: only now are the
        previous run's files removed)."""
        info, clear = {"run_id": ""}, False
        if self.world.is_main:
            point, info, clear = self.claim(point, overwrite)
        job = _prepare_data(self.cfg, point, self.out_dir, self.emit, self.world, self.should_stop)
        if job is None or self.stop_asked():
            raise Interrupted(point.ckpt["step"] if point else 0, "stopped during data preparation, before "
                              "training; nothing of the run was changed")
        check_keep(self.cfg, job)
        run = Run(self.cfg, job, info["run_id"], self.out_dir, self.world)
        if point:
            with explain_out_of_memory(self.cfg, "while restoring the checkpoint (the optimizer's state)"):
                run.restore(point)
        if self.world.is_main:
            rundir.start(self.out_dir, info, clear)
            if point:  # kept checkpoints past the resume point belong to the steps the run now takes again
                run.kept.drop_after(run.step)
        return run

    def claim(self, point: ResumePoint | None, overwrite: bool) -> tuple[ResumePoint | None, dict, bool]:
        """Under the run lock: the checkpoint to continue (re-read if another process wrote a newer one
        meanwhile), and out_dir claimed for this run (rundir.claim: refuses to mix runs). Returns (point,
        run info, whether the previous run's files are to be removed)."""
        if point and point.source and not point.is_current():
            point = ckpt_io.load_latest(point.source)
        changes = check_resume_config(point.ckpt["config"], self.cfg) if point else []
        info, clear = rundir.claim(self.out_dir, point.path if point else None, point.ckpt if point else None,
                                   overwrite)
        try:
            remove_stale_temporaries(self.out_dir)
        except OSError as e:
            raise write_failure(self.out_dir, e) from None
        if point:
            self.emit({"event": "resume", "path": str(point.path), "step": point.ckpt["step"], "changed": changes,
                       "skipped": point.problems})
        return point, info, clear

    def announce(self, n_steps: int | None) -> None:
        """The "start" event (the model, where it runs, the run's length), and any warning so far."""
        run, t = self.run, self.cfg.train
        self.emit({"event": "start", "params": run.model.num_params(), "flops_per_token": run.model.flops_per_token(),
                   "device": str(run.device), "dtype": str(run.dtype).replace("torch.", ""),
                   "dtype_reason": run.dtype_reason, "compiled": run.compiled is not None,
                   "world_size": self.world.size, "total_steps": n_steps, "start_step": run.step,
                   "max_time": t.max_time, "start_elapsed": run.elapsed, "run_id": run.run_id,
                   "kept_checkpoint_bytes": run.checkpoint_bytes() if run.kept.enabled else None,
                   "config": self.cfg.to_dict()})
        self.warn()

    # --- the steps, each logged, evaluated and saved on schedule

    def steps(self, n_steps: int | None) -> None:
        """Optimizer steps to the run's end, with a metrics line every log_interval and an evaluation and
        checkpoint every eval_interval. This process takes micro-batches rank, rank + N, ... of the run's
        sequence (lm.distributed). A stop on request checkpoints the step boundary and raises Interrupted."""
        run, t = self.run, self.cfg.train
        batches = run.job.batches(start=run.step * t.grad_accum + self.world.rank, stride=self.world.size)
        run.model.train()
        while not run_ended(run.step, run.elapsed, self.cfg, n_steps):
            lr = lr_at(run.step, self.cfg, n_steps, run.elapsed)  # by the clock: after the time used before it
            self.step(batches, lr)
            at_eval = run.evaluated_at(run.step)
            if at_eval or run.step % t.log_interval == 0:
                self.log(lr, evaluate=at_eval)
            if self.stop_asked() and not run_ended(run.step, run.elapsed, self.cfg, n_steps):
                if not at_eval:  # an evaluated step is saved already
                    run.save("last.pt")
                raise Interrupted(run.step, f"stopped at step {run.step}; {self.out_dir / 'last.pt'} holds it "
                                            f"(continue with --resume)")

    def step(self, batches, lr: float) -> None:
        """One optimizer step (train_step), counted in run.step, run.elapsed and the metrics window, and
        reported. By the clock (max_time) with several processes, the step's duration is their mean, so
        every process sees the same elapsed time and stops at the same step with the same learning rates."""
        run = self.run
        t0 = clock()
        loss, tokens, grad_norm = train_step(run, batches, lr)
        if run.device.type == "cuda":
            torch.cuda.synchronize()
        dt = clock() - t0
        if self.cfg.train.max_time is not None and self.world.size > 1:
            dt = self.world.sum([dt])[0] / self.world.size
        run.step, run.elapsed = run.step + 1, run.elapsed + dt
        run.window.add(loss, tokens, dt, grad_norm)
        self.warn()
        self.emit({"event": "step", "step": run.step, "loss": loss, "lr": lr, "elapsed_s": run.elapsed})

    def log(self, lr: float, evaluate: bool) -> None:
        """A metrics line for the steps since the last one; with evaluate, the evaluation (its batches
        shared out among the processes), saved, and loss.png redrawn. Evaluation time is not counted in
        elapsed_s."""
        run = self.run
        train_loss, tokens_per_sec, grad_norm = run.window.flush()
        record = {"step": run.step, "train_loss": train_loss, "lr": lr, **run.other_lrs(lr), "grad_norm": grad_norm,
                  "tokens_per_sec": tokens_per_sec, "elapsed_s": run.elapsed, "world_size": self.world.size}
        if evaluate:
            record.update(run.evaluate())
        self.write(record)
        if evaluate:
            self.save(record)
            self.plot()
        self.emit({"event": "log", **record})

    def write(self, record: dict) -> None:
        """A record into metrics.jsonl, and its numbers into the TensorBoard events."""
        self.metrics.write(record)
        if self.board is not None:
            self.board.scalars(record)

    def save(self, evaluated: dict) -> None:
        """Checkpoint an evaluated step (last.pt, best.pt when its val_loss is the lowest yet, and the
        kept checkpoint of a keep step), show examples of the model's predictions, and report the
        evaluation."""
        run = self.run
        best = run.save_evaluated(evaluated["val_loss"])
        for name in run.kept.names(run.step):
            run.save(name, evaluated)
            run.kept.prune()
        examples = run.examples()
        if self.board is not None:
            self.board_evaluation(examples)
            self.board.flush()  # every event up to the checkpoint is on disk, whatever ends the process later
        self.emit({"event": "eval", **evaluated, "best": best, "examples": examples})

    def board_evaluation(self, examples: list[dict]) -> None:
        """The examples as text and the attention overview on the first one's input, into TensorBoard."""
        run = self.run
        if examples:
            self.board.examples(run.step, examples_markdown(examples))
        probe = examples[0] if examples else next(iter(run.job.examples(run.model, run.device, run.dtype, 1)), None)
        if probe is not None:
            from .inspect.attention_maps import record as attention_record

            text = probe.get("input", probe.get("prompt"))
            try:
                self.board.attention(run.step, attention_record(run.model, run.job.vocab, self.cfg, text, run.device))
            except ValueError as e:  # e.g. a prompt longer than block_size: the run goes on without the image
                self.emit({"event": "warning", "message": f"no attention image at step {run.step}: {e}"})
            finally:
                run.model.train()

    # --- finish

    def finish(self, n_steps: int | None) -> dict:
        """Evaluate and checkpoint the last step (unless its evaluation was on schedule), then run the final
        evaluation: the whole validation split (lm) or the held-out sets (tasks). One record in
        metrics.jsonl, marked "final" (a resume past this point drops it). Returns the run's summary."""
        run = self.run
        record = {"step": run.step, "final": True, "world_size": self.world.size}
        if not run.evaluated_at(run.step):
            if run.window.steps:  # the steps since the last metrics line (the window stays in the checkpoint)
                record["train_loss"] = run.window.loss / run.window.steps
            record.update(run.evaluate())
            self.save(record)
        self.stop_if_asked("before")
        with explain_out_of_memory(self.cfg, "in the final evaluation"):
            final = run.job.final(run.model, run.device, run.dtype, self.world)
        self.stop_if_asked("during")
        record.update(final)
        record["elapsed_s"] = run.elapsed
        self.write(record)
        if self.board is not None:
            self.board.end()
        self.plot()
        self.emit({"event": "final", **record, "best_val_loss": run.best_val, "out_dir": str(self.out_dir)})
        steps = run.step if self.cfg.train.max_time is not None else n_steps  # by the clock: the steps it took
        return {**record, "best_val_loss": run.best_val, "total_steps": steps}

    def stop_if_asked(self, when: str) -> None:
        """Raise Interrupted when a stop is asked `when` ("before", "during") the final evaluation."""
        if self.stop_asked():
            raise Interrupted(self.run.step, f"stopped {when} the final evaluation; {self.out_dir / 'last.pt'} "
                                             f"holds step {self.run.step} (--resume runs the final evaluation)")

    # --- reporting

    def warn(self) -> None:
        """Report the run's pending warnings (e.g. compile turned off), each once."""
        for message in self.run.warnings:
            self.emit({"event": "warning", "message": message})
        self.run.warnings.clear()

    def plot(self) -> None:
        """Redraw loss.png; a failure is reported as a warning event, never stops the run."""
        problem = self.metrics.plot(self.run.title())
        if problem:
            self.emit({"event": "warning", "message": problem})


def check_keep(cfg: Config, job: Job) -> None:
    """keep_every_epoch needs a job with epochs (a corpus or sentence file, not generated examples)."""
    if cfg.train.keep_every_epoch and job.steps_per_epoch() is None:
        raise ConfigError(f"keep_every_epoch: true keeps a checkpoint at each epoch's end, but task "
                          f"{cfg.data.task!r} generates its examples and has no epochs; use keep_every: N (steps)")


def examples_markdown(examples: list[dict]) -> str:
    """The examples shown at an evaluation as TensorBoard text (markdown): one list item each, as code."""
    return "\n".join(f"- `{example_line(e)}`" for e in examples)


# ----------------------------------------------------------------------------- the data

# seconds between the main process's heartbeats to the others while it prepares the data
HEARTBEAT_S = 60.0


def _prepare_data(cfg: Config, point: ResumePoint | None, out_dir: Path, emit: Event, world: World,
                  should_stop: Callable[[], bool]) -> Job | None:
    """The job, its data prepared by the main process first (the others then reuse its cache); None on
    every process when a stop was asked during the main process's preparation.

    The others wait in a loop of small collectives that the main process joins (a heartbeat) at the
    first progress event of its preparation after HEARTBEAT_S seconds, so preparing a large corpus may
    take longer than a collective's timeout (lm.distributed.TIMEOUT) while a dead main process is still
    noticed. At the end it sends (1, outcome): 0 prepared, 1 stopped on request, 2 failed (its error is
    its own to report; the others stop with a short one)."""
    saved = point.ckpt if point else None
    if not world.is_main:
        while True:
            done, outcome = world.sum([0.0, 0.0])
            if done:
                break
        if outcome == 2:
            raise TrainingError("the main process (rank 0) failed while preparing the data; its error is above")
        return None if outcome == 1 else prepare_job(cfg, saved, out_dir, emit)
    try:
        job = prepare_job(cfg, saved, out_dir, emit, _Heartbeat(world, should_stop))
    except PreparationStopped:  # a long preparation stops on request, at its next progress event
        job = None
    except BaseException:
        if world.size > 1:
            with contextlib.suppress(Exception):  # the group may be what failed
                world.sum([1.0, 2.0])
        raise
    world.sum([1.0, 1.0 if job is None else 0.0])
    return job


class _Heartbeat:
    """The main process's stop request while it prepares the data, asked at each progress event: it also
    joins the others' wait (a heartbeat) when HEARTBEAT_S seconds have passed since the last one."""

    def __init__(self, world: World, should_stop: Callable[[], bool]):
        self.world, self.should_stop, self.last = world, should_stop, time.monotonic()

    def __call__(self) -> bool:
        if self.world.size > 1 and time.monotonic() - self.last > HEARTBEAT_S:
            self.world.sum([0.0, 0.0])
            self.last = time.monotonic()
        return self.should_stop()


def prepare_job(cfg: Config, saved: dict | None, out_dir: Path, emit: Event,
                should_stop: Callable[[], bool] = _never) -> Job:
    """The job (data or task) for cfg; sets cfg.model.vocab_size from it. A resumed run (saved: its
    checkpoint) must keep its vocabulary. Raises PreparationStopped when should_stop() while a corpus is
    prepared."""
    try:
        job = make_job(cfg, saved, out_dir, emit, should_stop)
    except OSError as e:  # writing the token cache
        raise write_failure(out_dir / "data", e) from None
    if saved:
        check_resume_vocab(saved, job.vocab.state())
    learned_bpe = not saved and cfg.data.task in ("lm", "spell") and cfg.data.tokenizer == "bpe"
    if learned_bpe and job.vocab.vocab_size != cfg.model.vocab_size:
        raise ConfigError(f"vocab_size: the training split has only enough distinct byte pairs for a BPE of "
                          f"{job.vocab.vocab_size} tokens, not {cfg.model.vocab_size}; use a smaller vocab_size "
                          f"or a longer corpus")
    if cfg.model.vocab_size not in (0, job.vocab.vocab_size):
        raise ConfigError(f"vocab_size: {cfg.model.vocab_size} does not match the data's {job.vocab.vocab_size} "
                          f"symbols; leave it at 0 to take it from the data")
    cfg.model.vocab_size = job.vocab.vocab_size
    return job


# ----------------------------------------------------------------------------- the state of a run

class Run:
    """What a training run holds between steps, and what its checkpoints save and restore:
    model, optimizer, gradient scaler, step, best validation loss, training time, metrics window."""

    def __init__(self, cfg: Config, job: Job, run_id: str, out_dir: Path, world: World = World()):
        t = cfg.train
        self.cfg, self.job, self.run_id, self.out_dir, self.world = cfg, job, run_id, out_dir, world
        self.device = resolve_device(t.device)
        if world.size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", world.local_rank)  # one GPU per process
        self.dtype, self.dtype_reason = choose_dtype(t.dtype, self.device)
        with explain_out_of_memory(cfg, "while building the model and moving it to the device"):
            torch.manual_seed(t.seed)
            self.model = make_model(cfg).to(self.device)
            self.optimizer = make_optimizer(self.model, cfg, self.device, self.dtype)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        self.step, self.best_val, self.elapsed, self.window = 0, float("inf"), 0.0, Window()
        self.kept = rundir.KeptCheckpoints(out_dir, t.keep_every, t.keep_every_epoch, t.keep_last,
                                           job.steps_per_epoch())
        self.warnings: list[str] = []  # for the loop to report (emitted as "warning" events)
        # the training forward: the model, wrapped by DistributedDataParallel with several processes (it
        # averages the gradients across them) and by torch.compile with compile: true. self.model stays
        # the plain module, so its state dict (the checkpoints) has no module. or _orig_mod. prefixes.
        self.trained = self.model
        if world.size > 1:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                forward_sync_buffers=False)
        self.compiled = None
        if t.compile:
            self.compiled, problem = compile_model(self.trained)
            if problem:
                self.warnings.append(f"compile: true, but {problem}; training runs in eager mode")

    def gradient_sync(self, last: bool):
        """Context for one micro-batch's forward and backward: with several processes, gradients are
        averaged across them only on the step's last micro-batch (no_sync on the others)."""
        if self.world.size > 1 and not last:
            return self.trained.no_sync()
        return contextlib.nullcontext()

    def loss(self, batch) -> tuple[torch.Tensor, int]:
        """The job's training loss on a batch, through the compiled model when there is one. If compiling
        fails (here, on the first step, or on a recompile for a new shape), compile is turned off for the
        rest of the run with a warning, and the batch is computed eagerly."""
        if self.compiled is not None:
            try:
                return self.job.loss(self.compiled, batch, self.device)
            except Exception as e:  # noqa: BLE001 - only compiler failures are caught, see is_compile_failure
                if not is_compile_failure(e):
                    raise
                self.compiled = None
                detail = " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:300]
                self.warnings.append(f"compile: true, but torch.compile failed ({type(e).__name__}: {detail}); "
                                     f"training goes on in eager mode")
        return self.job.loss(self.trained, batch, self.device)

    def restore(self, point: ResumePoint) -> None:
        """Continue exactly where the checkpoint left off (weights, optimizer, RNG, step, metrics window)."""
        ckpt = point.ckpt
        ckpt_io.load_weights(self.model, ckpt, point.path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        ckpt_io.set_rng_state(ckpt["rng"])
        self.step, self.elapsed = ckpt["step"], ckpt.get("elapsed_s", 0.0)
        self.best_val = ckpt["best_val_loss"] if ckpt["best_val_loss"] is not None else float("inf")
        self.window = Window(**ckpt.get("window", {}))

    def evaluated_at(self, step: int) -> bool:
        """Whether a step is evaluated (and checkpointed): every eval_interval steps, and every keep step."""
        return step % self.cfg.train.eval_interval == 0 or bool(self.kept.names(step))

    def other_lrs(self, lr: float) -> dict:
        """The learning rate of each optimizer but AdamW's (lr) at this step: {"lr_muon": ...} with Muon."""
        scale = lr / self.cfg.train.lr
        return {f"lr_{name}": peak * scale for name, peak in self.optimizer.peak_lr.items() if name != "adamw"}

    def examples(self) -> list[dict]:
        """show_examples of the model's predictions now (lm.jobs: held-out examples, or a continuation)."""
        n = self.cfg.train.show_examples
        return self.job.examples(self.model, self.device, self.dtype, n) if n > 0 and self.world.is_main else []

    def checkpoint_bytes(self) -> int:
        """About what one checkpoint costs on disk: the weights (each tensor once, so tied weights count
        once) and the optimizer's state, 2 tensors per parameter for AdamW (its moments), 1 for Muon
        (its momentum), written as they are held (float32)."""
        tensors = {t.data_ptr(): t.numel() * t.element_size() for t in self.model.state_dict().values()}
        slots = {"adamw": 2, "muon": 1}
        state = sum(slots.get(name, 2) * p.numel() * p.element_size()
                    for name, opt in self.optimizer.parts.items() for g in opt.param_groups for p in g["params"])
        return sum(tensors.values()) + state

    def evaluate(self) -> dict:
        """The job's evaluation of the model as it is now."""
        with explain_out_of_memory(self.cfg, f"while evaluating at step {self.step}"):
            return self.job.evaluate(self.model, self.device, self.dtype, self.world)

    def save_evaluated(self, val_loss: float) -> bool:
        """Checkpoint an evaluated step: last.pt, and best.pt when the validation loss is the lowest yet."""
        improved = val_loss < self.best_val
        self.best_val = min(self.best_val, val_loss)
        self.save("last.pt")
        if improved:
            self.save("best.pt")
        return improved

    def save(self, name: str, evaluation: dict | None = None) -> None:
        """Write out_dir/name atomically; the previous file stays whole if anything fails. evaluation: the
        step's evaluation record, saved with a kept checkpoint (ckpt/...) so it can be labelled later."""
        bad = [n for n, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(f"the weights became non-finite by step {self.step} ({', '.join(bad[:3])}...); "
                                f"no checkpoint was written. Try a lower lr (now {self.cfg.train.lr}) or gradient "
                                f"clipping.")
        if not self.world.is_main:
            return  # every process holds the same weights; the main one writes them
        payload = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "step": self.step,
                   "rng": ckpt_io.rng_state(), "config": self.cfg.to_dict(), "tokenizer": self.job.vocab.state(),
                   "best_val_loss": None if self.best_val == float("inf") else self.best_val,
                   "elapsed_s": self.elapsed, "run_id": self.run_id, "window": vars(self.window).copy()}
        if self.scaler.is_enabled():
            payload["scaler"] = self.scaler.state_dict()
        if evaluation is not None:
            payload["evaluation"] = {k: v for k, v in evaluation.items() if isinstance(v, (int, float, str))}
        path = self.out_dir / name
        with explain_out_of_memory(self.cfg, f"while saving {path}"):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                ckpt_io.save(path, payload)
            except OSError as e:
                kept = f"the previous {name} is intact" if path.exists() else f"no {name} was written"
                raise write_failure(path, e, kept) from None

    def title(self) -> str:
        """What loss.png's title says about the run."""
        m = self.cfg.model
        return (f"{self.out_dir}: task {self.cfg.data.task}, {m.num_blocks} blocks x {m.num_heads} heads x "
                f"{m.embedding_dim}, pos_encoding {m.pos_encoding}, attention {m.attention}, "
                f"norm_placement {m.norm_placement}")


def compile_model(model: torch.nn.Module) -> tuple[torch.nn.Module | None, str | None]:
    """torch.compile(model) (compiled lazily, on its first call), or None and why where torch cannot
    compile on this Python or platform."""
    try:
        import torch._dynamo

        if not torch._dynamo.is_dynamo_supported():
            return None, "torch.compile is not supported on this Python or platform"
        return torch.compile(model), None
    except Exception as e:  # noqa: BLE001 - any reason it cannot compile is reported, and the run goes on eagerly
        return None, f"torch.compile is unavailable ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})"


def is_compile_failure(e: BaseException) -> bool:
    """An error raised by the compiler (TorchDynamo's tracing or a backend such as Inductor, e.g. no
    working C++ compiler), as opposed to one from the computation itself, such as running out of memory."""
    module = type(e).__module__ or ""
    return module.startswith(("torch._dynamo", "torch._inductor")) and not _is_oom(e)


# ----------------------------------------------------------------------------- one step

def train_step(run: Run, batches, lr: float) -> tuple[float, int, float]:
    """One optimizer step at learning rate lr: grad_accum micro-batches forward and backward (gradients
    averaged), then clip and update. Returns (mean loss, tokens seen, the gradients' norm before clipping). The host waits for the device once
    per step, for the loss and the gradients' norm together.

    With N processes (lm.distributed), each runs grad_accum / N of the step's micro-batches (batches
    yields this process's share) and the gradients are averaged across processes once, on the last one:
    the step is the one a single process would take. The step's loss is averaged over them, its tokens summed.

    Raises TrainingError, before the weights change, when the loss or the gradients' norm is not finite.
    """
    cfg, t, world = run.cfg, run.cfg.train, run.world
    micro = t.grad_accum // world.size  # micro-batches on this process
    run.optimizer.set_lr_scale(lr / t.lr)  # AdamW at lr, Muon at muon_lr x the same factor
    total, tokens = None, 0
    with explain_out_of_memory(cfg, f"at training step {run.step + 1}"):
        # --- forward and backward over this process's micro-batches (gradients averaged across processes
        # on the last)
        for j in range(micro):
            with run.gradient_sync(last=j == micro - 1):
                with autocast(run.device, run.dtype):
                    loss, n = run.loss(next(batches))
                run.scaler.scale(loss / micro).backward()
            total = loss.detach() if total is None else total + loss.detach()
            tokens += n
        # --- gradient norm (clipped when grad_clip > 0), checked with the loss before any update
        for part in run.optimizer.parts.values():
            run.scaler.unscale_(part)
        params = [p for p in run.model.parameters() if p.grad is not None]
        if t.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, t.grad_clip)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        step_loss, grad_norm = torch.stack([total.float() / micro, norm.float()]).tolist()  # the one sync
        if world.size > 1:  # the mean loss over every process's micro-batches, and all their tokens
            loss_sum, tokens = world.sum([step_loss, tokens])
            step_loss, tokens = loss_sum / world.size, int(tokens)
        if not math.isfinite(step_loss):
            run.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"the training loss became {step_loss} at step {run.step + 1}; the weights were not "
                                f"updated and no checkpoint was written from this step. Try a lower lr "
                                f"(now {t.lr}), a smaller grad_clip, or dtype: float32.")
        if not math.isfinite(grad_norm) and not run.scaler.is_enabled():  # float16's scaler skips such steps
            run.optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"the gradients became non-finite (norm {grad_norm}) at step {run.step + 1} while the "
                                f"loss was finite ({step_loss:.4f}); the weights were not updated and no checkpoint "
                                f"was written from this step. Try a lower lr (now {t.lr}) or dtype: float32.")
        # --- update
        for part in run.optimizer.parts.values():
            run.scaler.step(part)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
    return step_loss, tokens, grad_norm


# ----------------------------------------------------------------------------- the clock, schedule and length

def clock() -> float:
    """The time source of a step's duration (run.elapsed, and max_time's budget); tests replace it."""
    return time.perf_counter()


def lr_at(step: int, cfg: Config, total_steps: int | None, elapsed: float = 0.0) -> float:
    """Learning rate for a step (0-based), by lr_schedule. (Muon's muon_lr follows the same curve,
    scaled: see lm.optim.Optimizers.set_lr_scale.) elapsed: the seconds of training before the step,
    used by a run by the clock (max_time) only.

    cosine: linear warm-up to lr over warmup_iters steps, then cosine decay to min_lr at step D
    (D = lr_decay_iters, or the run's total_steps when that is null):
        lr(s) = lr * (s + 1) / warmup                                   for s < warmup
        lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2   after, progress = (s - warmup) / (D - warmup)
    noam ("Attention Is All You Need", 5.3, scaled to peak at lr):
        lr(s) = lr * min((s + 1) / warmup, sqrt(warmup / (s + 1)))
    wsd (warm-up, stable, decay): the same warm-up, then lr until the last decay_fraction of the D steps,
    then a linear decay to min_lr at step D:
        lr(s) = min_lr + (lr - min_lr) * min(1, (D - s) / (decay_fraction * D))
    by the clock (max_time = T seconds): the warm-up stays in steps; after it, cosine and wsd follow the
    fraction of the time budget used, f = min(1, elapsed / T) (elapsed before step s), reaching min_lr at T:
        cosine: lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * f)) / 2
        wsd:    lr(s) = min_lr + (lr - min_lr) * min(1, (1 - f) / decay_fraction)
    (noam has no end: it is the same by steps or by the clock.)
    """
    t = cfg.train
    if t.lr_schedule == "noam":
        s = step + 1
        return t.lr * min(s / t.warmup_iters, math.sqrt(t.warmup_iters / s))
    if step < t.warmup_iters:
        return t.lr * (step + 1) / t.warmup_iters
    if t.max_time is not None:  # by the clock: the fraction of the time budget used
        used = min(1.0, elapsed / t.max_time)
        if t.lr_schedule == "wsd":
            return t.min_lr + (t.lr - t.min_lr) * min(1.0, (1.0 - used) / t.decay_fraction)
        return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * used))
    decay_end = t.lr_decay_iters if t.lr_decay_iters is not None else total_steps
    if t.lr_schedule == "wsd":
        left = max(0.0, (decay_end - step) / max(1.0, t.decay_fraction * decay_end))
        return t.min_lr + (t.lr - t.min_lr) * min(1.0, left)
    span = max(1, decay_end - t.warmup_iters)
    progress = min(1.0, (step - t.warmup_iters) / span)
    return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(cfg: Config, steps_per_epoch: float | None) -> int | None:
    """Optimizer steps in the run: max_iters, epochs, or whichever comes first; one epoch by default.
    None for a run by the clock alone (max_time, no max_iters or epochs): no step limit. steps_per_epoch
    is None for generated data, where only max_iters applies."""
    t = cfg.train
    by_length = t.max_iters is not None or t.max_time is not None
    epochs = t.epochs if t.epochs is not None else (None if by_length else 1.0)
    by_epochs = max(1, math.ceil(epochs * steps_per_epoch)) if epochs is not None else None
    limits = [n for n in (by_epochs, t.max_iters) if n is not None]
    return min(limits) if limits else None


def run_ended(step: int, elapsed: float, cfg: Config, n_steps: int | None) -> bool:
    """The run's length is reached after `step` steps and `elapsed` seconds of training: n_steps
    (None: no step limit), or max_time seconds, whichever comes first."""
    max_time = cfg.train.max_time
    return (n_steps is not None and step >= n_steps) or (max_time is not None and elapsed >= max_time)


# ----------------------------------------------------------------------------- metrics file

class MetricsLog:
    """metrics.jsonl: one JSON object per line.

    A fresh run starts it empty. On resume it is rewritten, atomically and only when the resumed run
    writes its first line, to the lines of the steps up to the checkpoint's, without the final record
    of an earlier end of the run (and without a line cut short by a crash): a resumed run's file
    equals an uninterrupted run's but for timings, and a resume that fails early changes nothing.
    """

    def __init__(self, path: Path, resume_step: int | None, writes: bool = True):
        self.path = path
        self.writes = writes  # False in every process of a data-parallel run but the main one
        self.kept: list[str] | None = []  # lines to keep, until the first write (then None)
        self.records: list[dict] = []  # the file's records (kept and written), as loss.png draws them
        if writes and resume_step is not None and path.exists():
            try:
                pairs = rundir.read_metrics(path)
            except OSError as e:
                raise OutputError(f"cannot read {str(path)!r}: {e.strerror or e}") from None
            pairs = [(line, r) for line, r in pairs if r.get("step", 0) <= resume_step and not _is_final(r)]
            self.kept, self.records = [line for line, _ in pairs], [r for _, r in pairs]

    def write(self, record: dict) -> None:
        if not self.writes:
            return
        line = json.dumps(record) + "\n"
        try:
            if self.kept is not None:
                write_text_atomic(self.path, "".join(k + "\n" for k in self.kept) + line)
                self.kept = None
            else:
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(line)
        except OSError as e:
            raise write_failure(self.path, e, "the checkpoints are intact; --resume continues from the last one") \
                from None
        self.records.append(record)

    def plot(self, title: str) -> str | None:
        """Redraw loss.png beside metrics.jsonl from every record so far (lm.inspect.plots.plot_run). The picture
        is only a view of metrics.jsonl: when it cannot be drawn or written, the run goes on and the
        reason is returned (None when it was drawn)."""
        if not self.writes:
            return None
        path = self.path.with_name("loss.png")
        try:
            from .inspect import plots  # matplotlib loads only when a run first evaluates (a faster start)

            plots.plot_run(self.records, path, title)
        except Exception as e:  # noqa: BLE001 - any failure to draw leaves the run and its files as they are
            detail = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0][:200]
            return f"{path} was not updated ({type(e).__name__}: {detail}); metrics.jsonl has every number"
        return None


def _is_final(record: dict) -> bool:
    """The record written at the end of a run (final evaluation), as opposed to a step's line."""
    return record.get("final") is True or any(k.startswith("final_") for k in record)


@dataclass
class Window:
    """Sums over the steps since the last metrics line; the line reports their mean loss and throughput.
    Saved in every checkpoint, so a line that spans a resume averages the same steps as without one."""

    loss: float = 0.0
    steps: int = 0
    tokens: int = 0
    seconds: float = 0.0
    grad_norm: float = 0.0  # summed over the steps (a checkpoint from before it existed has none: 0)

    def add(self, loss: float, tokens: int, seconds: float, grad_norm: float = 0.0) -> None:
        self.loss, self.steps = self.loss + loss, self.steps + 1
        self.tokens, self.seconds, self.grad_norm = self.tokens + tokens, self.seconds + seconds, self.grad_norm + grad_norm

    def flush(self) -> tuple[float, float, float]:
        """(mean training loss, tokens per second, mean gradient norm) of the window, which then starts
        again empty."""
        out = self.loss / self.steps, self.tokens / self.seconds, self.grad_norm / self.steps
        self.loss, self.steps, self.tokens, self.seconds, self.grad_norm = 0.0, 0, 0, 0.0, 0.0
        return out


# ----------------------------------------------------------------------------- out of memory

@contextlib.contextmanager
def explain_out_of_memory(cfg: Config, where: str):
    """Turn an allocation failure into a TrainingError that says what to change."""
    try:
        yield
    except (torch.OutOfMemoryError, MemoryError, RuntimeError) as e:
        if not _is_oom(e):
            raise
        t = cfg.train
        half = max(1, t.batch_size // 2)
        detail = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise TrainingError(
            f"out of memory {where} (batch_size {t.batch_size}, block_size {cfg.model.block_size}, "
            f"embedding_dim {cfg.model.embedding_dim}): use a smaller batch_size, e.g. --batch_size={half} "
            f"--grad_accum={t.grad_accum * t.batch_size // half} for the same effective batch, or a smaller "
            f"model or block_size. Checkpoints already written are untouched. ({detail})"
        ) from None


def _is_oom(e: BaseException) -> bool:
    """An allocation failure (of the device's memory or the host's), whatever raised it."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return "out of memory" in text or "can't allocate memory" in text
