"""The training loop for language modelling, and the pieces it is made of.

``train(cfg)`` runs a whole job: it prepares the data, builds (or restores) the model and
optimizer, trains with warm-up + cosine learning rate, gradient accumulation and
clipping, evaluates, writes ``metrics.jsonl`` and checkpoints, and finally measures
the validation loss over the whole validation split. It prints nothing: progress
goes to the ``on_event`` callback that the calling script owns.
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
from .data import Corpus, batch_iterator, obtain_corpus, prepare_corpus, sequential_windows, window_batch
from .nn import GPT
from .tokenizer import CharTokenizer

Event = Callable[[dict], None]

# Data streams: each kind of batch draws from its own deterministic sequence.
TRAIN_STREAM, EVAL_TRAIN_STREAM, EVAL_VAL_STREAM = 0, 1, 2


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message says what happened and what to try."""


# ----------------------------------------------------------------------------- devices and precision

def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; otherwise the named device, checked."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} was asked for but CUDA is not available here; use device: auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("device: 'mps' was asked for but MPS is not available here; use device: auto or cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Compute dtype for autocast. 'auto' = bfloat16 on a GPU that supports it, else float32.

    On CPUs bfloat16 autocast is usually slower than float32, so auto keeps float32 there.
    """
    if name == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if name == "float16" and device.type == "cpu":
        raise ConfigError("dtype: 'float16' is not supported on the CPU; use float32 or bfloat16")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    """Linear warm-up to lr over warmup_iters steps, then cosine decay to min_lr at step D
    (D = lr_decay_iters, or the run's total_steps when that is null):

        lr(s) = lr * (s + 1) / warmup                                   for s < warmup
        lr(s) = min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2   after, progress = (s - warmup) / (D - warmup)
    """
    t = cfg.train
    if step < t.warmup_iters:
        return t.lr * (step + 1) / t.warmup_iters
    decay_end = t.lr_decay_iters if t.lr_decay_iters is not None else total_steps
    span = max(1, decay_end - t.warmup_iters)
    progress = min(1.0, (step - t.warmup_iters) / span)
    return t.min_lr + (t.lr - t.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(cfg: Config, n_train_tokens: int) -> int:
    """Optimizer steps in the run: max_iters, epochs, or whichever comes first; one epoch by default.

    One epoch = as many block_size windows as the training split has tokens.
    """
    t = cfg.train
    windows_per_step = t.batch_size * t.grad_accum
    by_epochs = None
    epochs = t.epochs if t.epochs is not None else (None if t.max_iters is not None else 1.0)
    if epochs is not None:
        by_epochs = max(1, math.ceil(epochs * n_train_tokens / windows_per_step))
    candidates = [n for n in (by_epochs, t.max_iters) if n is not None]
    return min(candidates)


# ----------------------------------------------------------------------------- evaluation

@torch.no_grad()
def estimate_loss(model: GPT, corpus: Corpus, cfg: Config, device, dtype) -> dict:
    """Mean loss on eval_iters fixed batches of each split (the same batches at every evaluation)."""
    model.eval()
    out = {}
    for split, ids, stream in (("train", corpus.train, EVAL_TRAIN_STREAM), ("val", corpus.val, EVAL_VAL_STREAM)):
        losses = []
        for i in range(cfg.train.eval_iters):
            x, y = window_batch(ids, cfg.train.batch_size, cfg.model.block_size, cfg.train.seed, i, stream)
            with autocast(device, dtype):
                _, loss, _ = model(x.to(device), y.to(device))
            losses.append(loss.item())
        out[split] = sum(losses) / len(losses)
    model.train()
    return out


@torch.no_grad()
def full_split_loss(model: GPT, ids, block_size: int, batch_size: int, device, dtype) -> float:
    """Mean loss over every token of a split, each predicted once (consecutive windows): deterministic."""
    model.eval()
    total, count = 0.0, 0
    for x, y in sequential_windows(ids, block_size, batch_size):
        with autocast(device, dtype):
            logits, _, _ = model(x.to(device))
        loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)),
                                                 y.to(device).reshape(-1), reduction="sum")
        total += loss.item()
        count += y.numel()
    model.train()
    return total / count


def bits_per_char(loss_nats: float) -> float:
    """For a character-level model the loss per token is per character: bpc = loss / ln 2."""
    return loss_nats / math.log(2)


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


def check_resume_config(saved: dict, cfg: Config) -> list[tuple[str, object, object]]:
    """Refuse a model whose shape differs from the checkpoint's; return the other settings that changed."""
    new = cfg.to_dict()
    model_diff = [(k, a, b) for k, a, b in _changed(saved["model"], new["model"], "model.") if k != "model.vocab_size"]
    if model_diff:
        lines = "; ".join(f"{k}: checkpoint has {a!r}, config has {b!r}" for k, a, b in model_diff)
        raise ConfigError(f"cannot resume: the model differs from the checkpoint's ({lines})")
    return [(k, a, b) for k, a, b in _changed(saved, new) if not k.startswith("model.")]


# ----------------------------------------------------------------------------- the loop

def train(cfg: Config, *, resume: bool = False, on_event: Event | None = None) -> dict:
    """Train a character-level GPT as configured; returns a summary dict. See the module docstring."""
    emit = on_event or (lambda event: None)
    t = cfg.train
    out_dir = Path(t.out_dir)

    # --- restore: a resumed run takes model, optimizer, step and RNG state from last.pt
    saved = None
    if resume:
        saved = ckpt_io.load(out_dir / "last.pt")
        changes = check_resume_config(saved["config"], cfg)
        emit({"event": "resume", "path": str(out_dir / "last.pt"), "step": saved["step"], "changed": changes})

    # --- data: obtain the corpus, encode it once into a memmap cache in out_dir
    source = obtain_corpus(cfg.data.data_path)
    if source.note:
        emit({"event": "corpus_note", "note": source.note})
    tokenizer = CharTokenizer.from_state(saved["tokenizer"]) if saved else None
    corpus = prepare_corpus(source.path, out_dir / "data", cfg.data.val_fraction, cfg.model.block_size, tokenizer)
    if cfg.model.vocab_size not in (0, corpus.tokenizer.vocab_size):
        raise ConfigError(f"vocab_size: {cfg.model.vocab_size} does not match the corpus's "
                          f"{corpus.tokenizer.vocab_size} characters; leave it at 0 to take it from the data")
    cfg.model.vocab_size = corpus.tokenizer.vocab_size
    emit({"event": "data", "path": str(corpus.path), "vocab_size": cfg.model.vocab_size,
          "train_tokens": len(corpus.train), "val_tokens": len(corpus.val), "reused_cache": corpus.reused_cache})

    # --- model and optimizer
    device = resolve_device(t.device)
    dtype = resolve_dtype(t.dtype, device)
    torch.manual_seed(t.seed)
    model = GPT(cfg.model).to(device)
    optimizer = make_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, best_val = 0, float("inf")
    if saved:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if "scaler" in saved:
            scaler.load_state_dict(saved["scaler"])
        ckpt_io.set_rng_state(saved["rng"])
        step = saved["step"]
        best_val = saved["best_val_loss"] if saved["best_val_loss"] is not None else float("inf")
    n_steps = total_steps(cfg, len(corpus.train))
    tokens_per_step = t.batch_size * t.grad_accum * cfg.model.block_size
    emit({"event": "start", "params": model.num_params(), "flops_per_token": model.flops_per_token(),
          "device": str(device), "dtype": str(dtype).replace("torch.", ""), "total_steps": n_steps,
          "start_step": step, "tokens_per_step": tokens_per_step, "config": cfg.to_dict()})

    metrics = MetricsLog(out_dir / "metrics.jsonl", saved["step"] if saved else None)

    def save(name: str) -> None:
        payload = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                   "rng": ckpt_io.rng_state(), "config": cfg.to_dict(), "tokenizer": corpus.tokenizer.state(),
                   "best_val_loss": None if best_val == float("inf") else best_val, "elapsed_s": elapsed}
        if scaler.is_enabled():
            payload["scaler"] = scaler.state_dict()
        ckpt_io.save(out_dir / name, payload)

    def evaluate() -> dict:
        nonlocal best_val
        losses = estimate_loss(model, corpus, cfg, device, dtype)
        improved = losses["val"] < best_val
        best_val = min(best_val, losses["val"])
        save("last.pt")
        if improved:
            save("best.pt")
        return {"val_loss": losses["val"], "val_bpc": bits_per_char(losses["val"]),
                "eval_train_loss": losses["train"], "best": improved}

    batches = batch_iterator(corpus.train, t.batch_size, cfg.model.block_size, t.seed,
                             start=step * t.grad_accum, num_workers=cfg.data.num_workers, stream=TRAIN_STREAM)
    elapsed = saved.get("elapsed_s", 0.0) if saved else 0.0
    window_loss, window_steps, window_time = 0.0, 0, 0.0
    model.train()
    while step < n_steps:
        t0 = time.perf_counter()
        # --- learning rate for this step
        lr = lr_at(step, cfg, n_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # --- forward and backward over grad_accum micro-batches (gradients are summed)
        step_loss = 0.0
        for _ in range(t.grad_accum):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast(device, dtype):
                _, loss, _ = model(x, y)
            scaler.scale(loss / t.grad_accum).backward()
            step_loss += loss.item() / t.grad_accum
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

        # --- log and evaluate
        is_eval = step % t.eval_interval == 0 or step == n_steps
        if step % t.log_interval == 0 or is_eval:
            record = {"step": step, "train_loss": window_loss / window_steps, "lr": lr,
                      "tokens_per_sec": tokens_per_step * window_steps / window_time, "elapsed_s": elapsed}
            window_loss, window_steps, window_time = 0.0, 0, 0.0
            if is_eval:
                result = evaluate()
                improved = result.pop("best")
                record.update(result)
                emit({"event": "eval", **record, "best": improved})
            metrics.write(record)
            emit({"event": "log", **record})

    # --- final: the whole validation split, each token once
    final_loss = full_split_loss(model, corpus.val, cfg.model.block_size, t.batch_size, device, dtype)
    final = {"step": step, "final_val_loss": final_loss, "final_val_bpc": bits_per_char(final_loss),
             "elapsed_s": elapsed}
    metrics.write(final)
    emit({"event": "final", **final, "best_val_loss": best_val, "out_dir": str(out_dir)})
    return {**final, "best_val_loss": best_val, "total_steps": n_steps}
