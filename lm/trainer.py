"""The training loop, and the pieces it is made of.

``train(cfg)`` runs a whole job (language modelling or a seq2seq task, see ``lm.jobs``): it
prepares the data, builds (or restores) the model and optimizer, trains with a warm-up +
cosine (or Noam) learning rate, gradient accumulation and clipping, evaluates, writes
``metrics.jsonl`` and checkpoints, and ends with a final evaluation. It prints nothing:
progress goes to the ``on_event`` callback that the calling script owns.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch

from . import checkpoint as ckpt_io
from .config import Config, ConfigError
from .device import autocast, resolve_device, resolve_dtype
from .jobs import make_job, make_model

Event = Callable[[dict], None]


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says what happened and what to try."""


class Interrupted(Exception):
    """Training stopped on request (should_stop) at a step boundary, after writing last.pt."""

    def __init__(self, step: int, path: Path):
        super().__init__(f"stopped at step {step}; {path} holds it (continue with --resume)")
        self.step, self.path = step, path


def _is_oom(e: BaseException) -> bool:
    text = str(e).lower()
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


@contextlib.contextmanager
def explain_out_of_memory(cfg: Config, where: str):
    """Turn an allocation failure into a TrainingError that says what to change."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as e:
        if not _is_oom(e):
            raise
        t = cfg.train
        half = max(1, t.batch_size // 2)
        raise TrainingError(
            f"out of memory {where} (batch_size {t.batch_size}, block_size {cfg.model.block_size}, "
            f"embedding_dim {cfg.model.embedding_dim}): use a smaller batch_size, e.g. --batch_size={half} "
            f"--grad_accum={t.grad_accum * t.batch_size // half} for the same effective batch, or a smaller "
            f"model or block_size. Checkpoints already written are untouched. ({str(e).splitlines()[0][:160]})"
        ) from None


# ----------------------------------------------------------------------------- optimizer and schedule

def make_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.AdamW:
    """AdamW with weight decay on weight matrices (dim >= 2) only; biases and norms are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2),
                             fused=device.type == "cuda")


def lr_at(step: int, cfg: Config, total_steps: int) -> float:
    """Learning rate for a step (0-based), by lr_schedule.

    cosine: linear warm-up to lr over warmup_iters steps, then cosine decay to min_lr at step D
    (D = lr_decay_iters, or the run's total_steps when that is null):
        lr(s) = lr * (s + 1) / warmup                                   for s < warmup
        lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2   after, progress = (s - warmup) / (D - warmup)
    noam ("Attention Is All You Need", 5.3, scaled to peak at lr):
        lr(s) = lr * min((s + 1) / warmup, sqrt(warmup / (s + 1)))
    """
    t = cfg.train
    if t.lr_schedule == "noam":
        s = step + 1
        return t.lr * min(s / t.warmup_iters, math.sqrt(t.warmup_iters / s))
    if step < t.warmup_iters:
        return t.lr * (step + 1) / t.warmup_iters
    decay_end = t.lr_decay_iters if t.lr_decay_iters is not None else total_steps
    span = max(1, decay_end - t.warmup_iters)
    progress = min(1.0, (step - t.warmup_iters) / span)
    return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(cfg: Config, steps_per_epoch: float | None) -> int:
    """Optimizer steps in the run: max_iters, epochs, or whichever comes first; one epoch by default.
    steps_per_epoch is None for generated data, where only max_iters applies."""
    t = cfg.train
    epochs = t.epochs if t.epochs is not None else (None if t.max_iters is not None else 1.0)
    by_epochs = max(1, math.ceil(epochs * steps_per_epoch)) if epochs is not None else None
    return min(n for n in (by_epochs, t.max_iters) if n is not None)


# ----------------------------------------------------------------------------- metrics file

class MetricsLog:
    """metrics.jsonl: one JSON object per line. On resume, lines after the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:  # a line cut short by a crash
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- resume helpers

def _changed(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    out = []
    for key in new:
        if isinstance(new[key], dict):
            out += _changed(old.get(key, {}), new[key], f"{prefix}{key}.")
        elif old.get(key) != new[key]:
            out.append((f"{prefix}{key}", old.get(key), new[key]))
    return out


# model settings that may change on resume: dropout is not part of the weights' shape, and the
# vocabulary (vocab_size) is compared separately, against the data
_RESUMABLE_MODEL_KEYS = ("model.dropout", "model.vocab_size")


def check_resume_config(saved: dict, cfg: Config) -> list[tuple[str, object, object]]:
    """Refuse a model whose shape differs from the checkpoint's; return the other settings that changed."""
    changes = _changed(saved, cfg.to_dict())
    shape = [(k, a, b) for k, a, b in changes if k.startswith("model.") and k not in _RESUMABLE_MODEL_KEYS]
    if shape:
        lines = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, a, b in shape)
        raise ConfigError(f"cannot resume: the model differs from the checkpoint's ({lines})")
    return [(k, a, b) for k, a, b in changes if k != "model.vocab_size"]


# ----------------------------------------------------------------------------- the loop

def train(cfg: Config, *, resume: bool | str | Path = False, overwrite: bool = False,
          on_event: Event | None = None, should_stop: Callable[[], bool] | None = None) -> dict:
    """Train as configured (see the module docstring); returns a summary dict.

    resume: True continues the run in out_dir (its newest complete checkpoint); a path continues
    from that checkpoint file or run directory, writing to out_dir. overwrite: start afresh even
    if out_dir already holds a run (otherwise refused). should_stop: polled after every step;
    when it returns True, last.pt is written and Interrupted is raised.
    """
    emit = on_event or (lambda event: None)
    t = cfg.train
    out_dir = Path(t.out_dir)

    # --- restore: a resumed run takes model, optimizer, step and RNG state from a checkpoint
    saved = None
    if resume:
        path, saved, problems = ckpt_io.load_latest(out_dir if resume is True else resume)
        changes = check_resume_config(saved["config"], cfg)
        emit({"event": "resume", "path": str(path), "step": saved["step"], "changed": changes, "skipped": problems})
    elif (out_dir / "last.pt").exists() and not overwrite:
        raise ConfigError(f"out_dir {str(out_dir)!r} already holds a run (last.pt); continue it with --resume, "
                          f"choose another --out_dir, or pass --overwrite to start over and replace it")
    if out_dir.is_dir():
        ckpt_io.remove_stale_temporaries(out_dir)

    # --- data: the corpus (encoded once into a cache in out_dir) or the task's generator
    job = make_job(cfg, saved, out_dir, emit)
    if saved and saved["tokenizer"] != job.vocab.state():
        raise ConfigError(f"cannot resume: the vocabulary differs from the checkpoint's (checkpoint "
                          f"{_describe_vocab(saved['tokenizer'])}, this run {_describe_vocab(job.vocab.state())})")
    if cfg.model.vocab_size not in (0, job.vocab.vocab_size):
        raise ConfigError(f"vocab_size: {cfg.model.vocab_size} does not match the data's {job.vocab.vocab_size} "
                          f"symbols; leave it at 0 to take it from the data")
    cfg.model.vocab_size = job.vocab.vocab_size

    # --- model and optimizer
    device = resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device)
    torch.manual_seed(t.seed)
    model = make_model(cfg).to(device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, best_val, elapsed = 0, float("inf"), 0.0
    if saved:
        ckpt_io.load_weights(model, saved, path)
        optimizer.load_state_dict(saved["optimizer"])
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        ckpt_io.set_rng_state(saved["rng"])
        step, elapsed = saved["step"], saved.get("elapsed_s", 0.0)
        best_val = saved["best_val_loss"] if saved["best_val_loss"] is not None else float("inf")
    n_steps = total_steps(cfg, job.steps_per_epoch())
    emit({"event": "start", "params": model.num_params(), "flops_per_token": model.flops_per_token(),
          "device": str(device), "dtype": str(dtype).replace("torch.", ""), "total_steps": n_steps,
          "start_step": step, "config": cfg.to_dict()})
    metrics = MetricsLog(out_dir / "metrics.jsonl", saved["step"] if saved else None)

    def save(name: str) -> None:
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(f"the weights became non-finite by step {step} ({', '.join(bad[:3])}...); "
                                f"no checkpoint was written. Try a lower lr (now {t.lr}) or gradient clipping.")
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                   "rng": ckpt_io.rng_state(), "config": cfg.to_dict(), "tokenizer": job.vocab.state(),
                   "best_val_loss": None if best_val == float("inf") else best_val, "elapsed_s": elapsed}
        if scaler.is_enabled():
            payload["scaler"] = scaler.state_dict()
        ckpt_io.save(out_dir / name, payload)

    def evaluate_and_save() -> tuple[dict, bool]:
        nonlocal best_val
        with explain_out_of_memory(cfg, f"while evaluating at step {step}"):
            result = job.evaluate(model, device, dtype)
        improved = result["val_loss"] < best_val
        best_val = min(best_val, result["val_loss"])
        save("last.pt")
        if improved:
            save("best.pt")
        return result, improved

    batches = job.batches(start=step * t.grad_accum)
    window_loss, window_steps, window_time, window_tokens = 0.0, 0, 0.0, 0
    model.train()
    while step < n_steps:
        t0 = time.perf_counter()
        # --- learning rate for this step
        lr = lr_at(step, cfg, n_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # --- forward and backward over grad_accum micro-batches (gradients are summed)
        step_loss = 0.0
        with explain_out_of_memory(cfg, f"at training step {step + 1}"):
            for _ in range(t.grad_accum):
                with autocast(device, dtype):
                    loss, n_tokens = job.loss(model, next(batches), device)
                scaler.scale(loss / t.grad_accum).backward()
                step_loss += loss.item() / t.grad_accum
                window_tokens += n_tokens
        if not math.isfinite(step_loss):
            optimizer.zero_grad(set_to_none=True)
            raise TrainingError(f"the training loss became {step_loss} at step {step + 1}; the weights were not "
                                f"updated and no checkpoint was written from this step. Try a lower lr "
                                f"(now {t.lr}), a smaller grad_clip, or dtype: float32.")
        # --- clip and update
        if t.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        elapsed += dt
        window_loss, window_steps, window_time = window_loss + step_loss, window_steps + 1, window_time + dt
        emit({"event": "step", "step": step, "loss": step_loss, "lr": lr})

        # --- log and evaluate (evaluation time is not counted in elapsed_s)
        is_eval = step % t.eval_interval == 0 or step == n_steps
        if step % t.log_interval == 0 or is_eval:
            record = {"step": step, "train_loss": window_loss / window_steps, "lr": lr,
                      "tokens_per_sec": window_tokens / window_time, "elapsed_s": elapsed}
            window_loss, window_steps, window_time, window_tokens = 0.0, 0, 0.0, 0
            if is_eval:
                result, improved = evaluate_and_save()
                record.update(result)
                emit({"event": "eval", **record, "best": improved})
            metrics.write(record)
            emit({"event": "log", **record})

        # --- stop on request (SIGTERM, Ctrl-C): checkpoint this step boundary, then leave
        if should_stop is not None and should_stop() and step < n_steps:
            if not is_eval:
                save("last.pt")
            raise Interrupted(step, out_dir / "last.pt")

    # --- final evaluation: the whole validation split (lm) or the held-out sets (tasks)
    with explain_out_of_memory(cfg, "in the final evaluation"):
        final = {"step": step, **job.final(model, device, dtype), "elapsed_s": elapsed}
    metrics.write(final)
    emit({"event": "final", **final, "best_val_loss": best_val, "out_dir": str(out_dir)})
    return {**final, "best_val_loss": best_val, "total_steps": n_steps}


def _describe_vocab(state: dict) -> str:
    if state.get("kind") == "char":
        return f"{len(state['chars'])} characters"
    return ", ".join(f"{k} {v}" for k, v in state.items() if k != "kind")
