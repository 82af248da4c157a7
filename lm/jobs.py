"""What is being learned: a job supplies the model, the batches, the loss and the evaluation.

The training loop (``lm.trainer.train``) is the same for every job: it knows a job only through the
``Job`` protocol below (its vocabulary, its length in epochs, its batches, its loss, its evaluations).

    LanguageModelJob   task: lm       GPT on a text corpus, random block_size windows
    Seq2SeqJob         task: copy...  EncoderDecoder on generated (source, target) pairs

``make_job`` builds the one a config asks for. Each batch is a pure function of (seed, index), so a
resumed run replays the same data.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
import torch.nn as nn

from .config import Config, ConfigError
from .data.corpus import PreparationStopped, TokenizerSource, obtain_corpus, prepare_corpus
from .data.layout import positions
from .data.padding import pad_sequences
from .data.tasks import BOS, EOS, PAD, Task, make_task, task_from_state
from .data.tokenizer import make_tokenizer, tokenizer_from_state
from .data.windows import batch_iterator, seeded_generator, sequential_windows, window_batch
from .device import autocast
from .distributed import World
from .generate import greedy_decode
from .nn.loss import token_loss

# Data streams: each kind of batch draws from its own deterministic sequence.
TRAIN_STREAM, EVAL_TRAIN_STREAM, EVAL_VAL_STREAM, HELD_OUT_STREAM, LONG_STREAM = range(5)


class Vocabulary(Protocol):
    """A job's vocabulary as the trainer sees it: a tokenizer (lm) or a Task (seq2seq)."""

    @property
    def vocab_size(self) -> int:
        """The number of token ids: the model's vocab_size."""

    def state(self) -> dict:
        """Everything needed to rebuild it (saved in every checkpoint; vocab_from_state reads it back)."""


class Job(Protocol):
    """What every job provides the training loop (lm.trainer), which is written against this alone.

    A job is built by make_job(cfg, saved, out_dir, emit, should_stop): it prepares its data (reporting
    events through emit, stopping with PreparationStopped when should_stop() during a long preparation),
    checks the config against the data, and, resumed (saved: the checkpoint), keeps the checkpoint's
    vocabulary. model is the module to run: the plain model, or the one wrapped for training
    (DistributedDataParallel, torch.compile)."""

    vocab: Vocabulary  # the model's vocab_size comes from it; every checkpoint saves its state

    def steps_per_epoch(self) -> float | None:
        """Optimizer steps in one pass over the training data (epochs count in them); None for generated data."""

    def batches(self, start: int, stride: int = 1) -> Iterator:
        """Training batches start, start + stride, ... (stride: the number of data-parallel processes),
        each a pure function of (seed, index), so a resumed run replays the same data."""

    def loss(self, model: nn.Module, batch, device: torch.device) -> tuple[torch.Tensor, int]:
        """The training loss of one batch (a scalar tensor to backpropagate), and the tokens it holds."""

    def evaluate(self, model: nn.Module, device: torch.device, dtype: torch.dtype, world: World = World()) -> dict:
        """The evaluation every eval_interval steps: val_loss (best.pt follows it) and the job's own metrics,
        the same in every process (world: the processes, which may share out the work)."""

    def final(self, model: nn.Module, device: torch.device, dtype: torch.dtype, world: World = World()) -> dict:
        """The evaluation at the end of the run, its metrics named final_..., the same in every process."""


def vocab_from_state(state: dict):
    """The tokenizer (lm) or task (seq2seq) saved in a checkpoint."""
    return task_from_state(state) if state.get("kind") == "task" else tokenizer_from_state(state)


def bits_per_char(loss_nats: float, tokens_per_char: float = 1.0) -> float:
    """Bits per character from a loss in nats per token: bpc = loss x (tokens / characters) / ln 2. For a
    character-level model tokens are characters; with BPE, comparing bpc compares tokenizers fairly."""
    return loss_nats * tokens_per_char / math.log(2)


# ----------------------------------------------------------------------------- language modelling

class LanguageModelJob:
    """Next-character prediction on a text corpus (first 90% train, last 10% validation)."""

    def __init__(self, cfg: Config, saved: dict | None, out_dir: Path, emit: Callable[[dict], None],
                 should_stop: Callable[[], bool] = lambda: False):
        self.cfg = cfg
        source = obtain_corpus(cfg.data.data_path)
        if source.note:
            emit({"event": "corpus_note", "note": source.note})
        d, m = cfg.data, cfg.model
        tokenizer = tokenizer_from_state(saved["tokenizer"]) if saved else None
        # what a fresh run asks for: char, bpe of vocab_size tokens (learned from a sample of the training
        # split), or a tiktoken encoding
        spec = {"tokenizer": d.tokenizer,
                **({"vocab_size": m.vocab_size, "sample": d.tokenizer_sample} if d.tokenizer == "bpe" else {}),
                **({"file": d.tokenizer_file} if d.tokenizer_file else {})}

        def progress(event: dict) -> None:
            """Long preparation shows progress, and stops on request (Ctrl-C, SIGTERM) at the next event,
            leaving no half-written file."""
            emit({"event": "prepare", **event})
            if should_stop():
                raise PreparationStopped

        def make(corpus: TokenizerSource):
            if d.tokenizer == "bpe":
                sample = corpus.sample(d.tokenizer_sample)
                chars = sum(map(len, sample))
                learned_from = (f"the training split ({chars:,} characters)" if chars == corpus.n_train else
                                f"{chars:,} characters of the training split ({corpus.n_train:,}), in "
                                f"{len(sample)} evenly spaced pieces")
                emit({"event": "tokenizer", "message": f"learning a byte-level BPE of {m.vocab_size} tokens "
                                                       f"from {learned_from}"})
                return make_tokenizer("bpe", sample, m.vocab_size,
                                      progress=lambda done, total: progress({"stage": "bpe", "done": done,
                                                                             "total": total}))
            try:
                return make_tokenizer(d.tokenizer, corpus.chars, m.vocab_size, d.tokenizer_file)
            except ValueError as e:  # e.g. a tiktoken encoding that is not available offline
                raise ConfigError(f"tokenizer: {e}") from None

        self.corpus = prepare_corpus(source.files, out_dir / "data", d.val_fraction, m.block_size, tokenizer,
                                     make, spec, progress, name=source.name)
        self.vocab = self.corpus.tokenizer
        self.tokens_per_char = len(self.corpus.val) / self.corpus.val_chars  # of the validation split
        emit({"event": "data", "path": source.name, "files": len(source.files), "vocab_size": self.vocab.vocab_size,
              "train_tokens": len(self.corpus.train), "val_tokens": len(self.corpus.val),
              "reused_cache": self.corpus.reused_cache})

    def steps_per_epoch(self) -> float:
        """One epoch = as many block_size windows as the training split has tokens."""
        t = self.cfg.train
        return len(self.corpus.train) / (t.batch_size * t.grad_accum)

    def batches(self, start: int, stride: int = 1) -> Iterator:
        """Training batches start, start + stride, ... (stride: the number of data-parallel processes)."""
        c = self.cfg
        return batch_iterator(self.corpus.train, c.train.batch_size, c.model.block_size, c.train.seed, start,
                              c.data.num_workers, TRAIN_STREAM, stride)

    def loss(self, model, batch, device) -> tuple[torch.Tensor, int]:
        """Training loss of one batch, and the number of tokens it holds."""
        x, y = (t.to(device, non_blocking=True) for t in batch)
        logits, _ = model(x)
        return token_loss(logits, y, label_smoothing=self.cfg.train.label_smoothing), y.numel()

    @torch.no_grad()
    def evaluate(self, model, device, dtype, world: World = World()) -> dict:
        """Mean loss on eval_iters fixed batches of each split (the same batches at every evaluation).
        With several processes each takes every world.size-th batch and the sums are added up."""
        c = self.cfg
        model.eval()
        totals = []
        for ids, stream in ((self.corpus.train, EVAL_TRAIN_STREAM), (self.corpus.val, EVAL_VAL_STREAM)):
            total = 0.0
            for i in range(world.rank, c.train.eval_iters, world.size):
                x, y = window_batch(ids, c.train.batch_size, c.model.block_size, c.train.seed, i, stream)
                with autocast(device, dtype):
                    logits, _ = model(x.to(device))
                    loss = token_loss(logits, y.to(device))
                total += loss.item()
            totals.append(total)
        model.train()
        train_loss, val_loss = (x / c.train.eval_iters for x in world.sum(totals, device))
        return {"val_loss": val_loss, "val_bpc": bits_per_char(val_loss, self.tokens_per_char),
                "eval_train_loss": train_loss}

    @torch.no_grad()
    def final(self, model, device, dtype, world: World = World()) -> dict:
        """Mean loss over every validation token, each predicted once (consecutive windows): deterministic.
        With several processes each takes every world.size-th batch and the sums are added up."""
        model.eval()
        total, count = 0.0, 0
        windows = sequential_windows(self.corpus.val, self.cfg.model.block_size, self.cfg.train.batch_size)
        for b, (x, y) in enumerate(windows):
            if b % world.size != world.rank:
                continue
            with autocast(device, dtype):
                logits, _ = model(x.to(device))
            total += token_loss(logits, y.to(device)).item() * y.numel()
            count += y.numel()
        model.train()
        total, count = world.sum([total, count], device)
        loss = total / count
        return {"final_val_loss": loss, "final_val_bpc": bits_per_char(loss, self.tokens_per_char)}


# ----------------------------------------------------------------------------- seq2seq tasks

def collate(pairs: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, ...]:
    """(source, target) id lists -> src, src_mask, decoder input (BOS + target), expected output (target + EOS)."""
    src, src_mask = pad_sequences([s for s, _ in pairs], PAD)
    tgt_in, _ = pad_sequences([[BOS] + t for _, t in pairs], PAD)
    tgt_out, _ = pad_sequences([t + [EOS] for _, t in pairs], PAD)
    return src, src_mask, tgt_in, tgt_out


def _to(t: torch.Tensor | None, device) -> torch.Tensor | None:
    return None if t is None else t.to(device, non_blocking=True)


class Seq2SeqJob:
    """A generated task (copy, reverse, sort, add, grid) on an encoder-decoder: fresh examples every step,
    fixed held-out sets of the trained lengths and of longer ones."""

    def __init__(self, cfg: Config, saved: dict | None, out_dir: Path, emit: Callable[[dict], None],
                 should_stop: Callable[[], bool] = lambda: False):
        self.cfg = cfg
        d = cfg.data
        longest = max(d.max_len, d.eval_long_len)
        self.task: Task = make_task(d.task, d.num_symbols, longest, d.grid_op)
        self.vocab = self.task
        need = max(self.task.max_lengths(longest))
        if cfg.model.block_size < need:
            raise ConfigError(f"block_size: {cfg.model.block_size} is too small for task {d.task!r} with lengths up "
                              f"to {longest} (max_len / eval_long_len): sequences need {need} positions")
        seed = cfg.train.seed
        self.held_out = self.task.examples(d.held_out_size, d.min_len, d.max_len,
                                           seeded_generator(seed, HELD_OUT_STREAM))
        self.long = (self.task.examples(d.held_out_size, d.max_len + 1, d.eval_long_len,
                                        seeded_generator(seed, LONG_STREAM))
                     if d.eval_long_len > d.max_len else [])
        emit({"event": "task", "task": d.task, "vocab_size": self.task.vocab_size, "lengths": (d.min_len, d.max_len),
              "held_out": len(self.held_out), "long_lengths": (d.max_len + 1, d.eval_long_len) if self.long else None})

    def steps_per_epoch(self) -> None:
        return None  # fresh examples every step: no epochs (the config must set max_iters)

    def positions(self, pairs, g: torch.Generator | None = None):
        """(src_pos, tgt_pos) of these examples (None, None: the model's consecutive default); random
        positions drawn from g in training, evenly spread ones (g None) in evaluation (see lm.data.layout)."""
        return positions(self.task, self.cfg.model.pos_encoding, [s for s, _ in pairs], self.cfg.model.block_size, g)

    def batch(self, index: int) -> tuple:
        """Training batch `index`: (src, src_mask, tgt_in, tgt_out, src_pos, tgt_pos), a pure function of
        (seed, index); the positions are None unless the encoding needs them from the task."""
        c = self.cfg
        g = seeded_generator(c.train.seed, TRAIN_STREAM, index)
        pairs = self.task.examples(c.train.batch_size, c.data.min_len, c.data.max_len, g)
        src_pos, tgt_pos = self.positions(pairs, g)
        if tgt_pos is not None:
            tgt_pos = tgt_pos[:, : max(len(t) for _, t in pairs) + 1]  # the decoder inputs: BOS + target
        return (*collate(pairs), src_pos, tgt_pos)

    def batches(self, start: int, stride: int = 1) -> Iterator:
        """Training batches start, start + stride, ... (stride: the number of data-parallel processes)."""
        for index in itertools.count(start, stride):
            yield self.batch(index)

    def loss(self, model, batch, device) -> tuple[torch.Tensor, int]:
        tokens = int(batch[1].sum() + (batch[3] != PAD).sum())  # counted on the host batch: no device sync
        src, src_mask, tgt_in, tgt_out, src_pos, tgt_pos = (_to(t, device) for t in batch)
        # label smoothing never puts probability on PAD or BOS: neither is ever a right output
        logits, _ = model(src, tgt_in, src_mask, src_pos=src_pos, tgt_pos=tgt_pos)
        loss = token_loss(logits, tgt_out, ignore_index=PAD, label_smoothing=self.cfg.train.label_smoothing,
                          no_smooth_ids=(PAD, BOS))
        return loss, tokens

    @torch.no_grad()
    def score(self, model, pairs, device, dtype, chunk: int = 500) -> dict:
        """Teacher-forced loss, and greedy decoding's token accuracy and exact-match, over pairs.

        Token accuracy: share of expected output tokens (EOS included) that the decoder got right at
        their position. Exact match: share of examples whose whole output (up to EOS) is right.
        """
        model.eval()
        loss_sum, loss_count, right, tokens, exact = 0.0, 0, 0, 0, 0
        for i in range(0, len(pairs), chunk):
            part = pairs[i : i + chunk]
            src, src_mask, tgt_in, tgt_out = (t.to(device) for t in collate(part))
            src_pos, tgt_pos = (_to(t, device) for t in self.positions(part))  # evenly spread: evaluation
            with autocast(device, dtype):
                logits, _ = model(src, tgt_in, src_mask, src_pos=src_pos,
                                  tgt_pos=None if tgt_pos is None else tgt_pos[:, : tgt_in.size(1)])
                loss = token_loss(logits, tgt_out, ignore_index=PAD)
                out = greedy_decode(model, src, src_mask, tgt_out.size(1), BOS, EOS, PAD, src_pos=src_pos,
                                    tgt_pos=tgt_pos)
            n_real = int((tgt_out != PAD).sum())
            loss_sum, loss_count = loss_sum + loss.item() * n_real, loss_count + n_real
            width = tgt_out.size(1)
            if out.size(1) < width:  # every row stopped early: pad to the expected width
                out = torch.cat([out, out.new_full((out.size(0), width - out.size(1)), PAD)], dim=1)
            real = tgt_out != PAD
            hit = (out[:, :width] == tgt_out) & real
            right += int(hit.sum())
            tokens += int(real.sum())
            exact += int((hit | ~real).all(dim=1).sum())
        model.train()
        return {"loss": loss_sum / loss_count, "token_acc": right / tokens, "exact": exact / len(pairs)}

    def evaluate(self, model, device, dtype, world: World = World()) -> dict:
        """Loss, token accuracy and exact match on the held-out sets. Every process scores them whole
        (they are small; the results are the same in each), so world is not needed."""
        held = self.score(model, self.held_out, device, dtype)
        out = {"val_loss": held["loss"], "val_token_acc": held["token_acc"], "val_exact": held["exact"]}
        if self.long:
            long = self.score(model, self.long, device, dtype)
            out.update({"long_token_acc": long["token_acc"], "long_exact": long["exact"]})
        return out

    def final(self, model, device, dtype, world: World = World()) -> dict:
        return {f"final_{k}": v for k, v in self.evaluate(model, device, dtype).items()}


def make_job(cfg: Config, saved: dict | None, out_dir: Path, emit: Callable[[dict], None],
             should_stop: Callable[[], bool] = lambda: False) -> Job:
    """The job for cfg.data.task. should_stop() is asked while a corpus is prepared (PreparationStopped)."""
    job = LanguageModelJob if cfg.data.task == "lm" else Seq2SeqJob
    return job(cfg, saved, out_dir, emit, should_stop)
