"""What is being learned: a job supplies the model, the batches, the loss and the evaluation.

The training loop (``lm.trainer.train``) is the same for every job: it knows a job only through the
``Job`` protocol below (its vocabulary, its length in epochs, its batches, its loss, its evaluations,
the examples of its predictions shown at each evaluation).

    LanguageModelJob   task: lm       GPT on a text corpus, random block_size windows
    Seq2SeqJob         task: copy...  EncoderDecoder on generated (source, target) pairs
    SpellJob           task: spell    EncoderDecoder correcting a corpus's sentences, noised afresh
    GraphJob           task: graph    NodeClassifier labelling the nodes of random graphs (mask = edges)

``make_job`` builds the one a config asks for. Each batch is a pure function of (seed, index), so a
resumed run replays the same data.
"""

from __future__ import annotations

import itertools
import math
import random
import string
from pathlib import Path
from typing import Callable, Iterator, Protocol

import numpy as np
import torch
import torch.nn as nn

from .answers import answer, decode_tokens, graph_answer
from .config import Config, ConfigError
from .data.corpus import DataError, PreparationStopped, TokenizerSource, obtain_corpus, prepare_corpus
from .data.noise import NoiseModel, load_misspellings
from .data.graphs import IGNORE, GraphBatch, GraphTask
from .data.layout import positions
from .data.padding import pad_sequences
from .data.spell import SentenceFile, SpellTask, prepare_sentences
from .data.tasks import BOS, EOS, NUM_SPECIALS, PAD, Task, make_task, task_from_state
from .data.tokenizer import CharTokenizer, make_tokenizer, tokenizer_from_state
from .data.windows import batch_iterator, seeded_generator, sequential_windows, window_batch
from .device import autocast
from .distributed import World
from .generate import generate, greedy_decode, keeps_input
from .nn.loss import token_loss
from .spelling import DictionaryCorrector, known_words_of, spelling_scores

# Data streams: each kind of batch draws from its own deterministic sequence.
TRAIN_STREAM, EVAL_TRAIN_STREAM, EVAL_VAL_STREAM, HELD_OUT_STREAM, LONG_STREAM, ORDER_STREAM = range(6)
BUCKET_BATCHES = 50  # task spell: batches' worth of shuffled sentences sorted by length together
# task lm's example (LanguageModelJob.examples): a prompt of at most this many tokens (and half of
# block_size), continued by at most this many (fewer where block_size ends first)
EXAMPLE_PROMPT_TOKENS, EXAMPLE_NEW_TOKENS = 24, 64


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

    def examples(self, model: nn.Module, device: torch.device, dtype: torch.dtype, n: int) -> list[dict]:
        """What the model predicts now, to show at an evaluation (show_examples): seq2seq, the first n
        held-out examples {"input", "prediction", "target", "right"}; a language model, one continuation
        {"prompt", "continuation", "max_new_tokens"} whatever n >= 1. Each is what sample.py prints for a
        checkpoint of these weights: decoded as sample.py decodes (lm.answers), in float32 whatever dtype the
        run trains in. The model's train/eval mode is left as it was. Any process may call it."""


def vocab_from_state(state: dict):
    """The tokenizer (lm) or task (seq2seq) saved in a checkpoint."""
    if state.get("kind") != "task":
        return tokenizer_from_state(state)
    if state["task"] == "spell":
        return SpellTask.from_state(state)
    if state["task"] == "graph":
        return GraphTask.from_state(state)
    return task_from_state(state)


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

    def example_prompt(self) -> str:
        """The examples' fixed prompt: in the validation split's first 1,024 tokens, the first whole line with
        text after the first line break (the split may begin mid-line; where there is no such line, that
        text from its start), cut to EXAMPLE_PROMPT_TOKENS tokens, or half of block_size where that is less."""
        limit = max(1, min(EXAMPLE_PROMPT_TOKENS, self.cfg.model.block_size // 2))
        text = "".join(decode_tokens(self.vocab, self.corpus.val[:1024].tolist()))
        lines = text.split("\n")
        whole = [line + "\n" for line in lines[1:-1] if line.strip()]  # the last piece may end mid-line
        prompt = (whole[0] if whole else text)[: 8 * limit]  # more characters than limit tokens hold, mostly
        while len(self.vocab.encode(prompt)) > limit and len(prompt) > 1:
            prompt = prompt[:-1]
        return prompt

    def examples(self, model, device, dtype, n: int) -> list[dict]:
        """One greedy continuation of example_prompt() (n > 1 still gives one; n = 0 none): {"prompt",
        "continuation", "max_new_tokens"}, the continuation what `sample.py --prompt PROMPT --temperature 0
        --max_new_tokens N` prints after the prompt; N = EXAMPLE_NEW_TOKENS, fewer where prompt and
        continuation would not fit in block_size. In float32, as sample.py runs (dtype is not used)."""
        if n < 1:
            return []
        prompt = self.example_prompt()
        ids = self.vocab.encode(prompt)
        new = max(1, min(EXAMPLE_NEW_TOKENS, self.cfg.model.block_size - len(ids)))
        was_training = model.training
        try:
            idx = torch.tensor(ids, dtype=torch.long, device=device)[None]  # (1, T)
            tokens = generate(model, idx, new, temperature=0.0)  # yields (1, 1) per step
            continuation = "".join(decode_tokens(self.vocab, (token[0, 0].item() for token in tokens)))
        finally:
            model.train(was_training)
        return [{"prompt": prompt, "continuation": continuation, "max_new_tokens": new}]


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

    def examples(self, model, device, dtype, n: int) -> list[dict]:
        """The first n held-out examples (evaluate's), each written as the task writes it: the source as
        sample.py --input takes it, and the target."""
        task = self.task
        return self.answers(model, device, [(task.render(task.from_ids(s)), task.render(task.from_ids(t)))
                                            for s, t in self.held_out[:n]])

    def answers(self, model, device, pairs: list[tuple[str, str]]) -> list[dict]:
        """{"input", "prediction", "target", "right"} of each (input, target) text: the prediction what
        `sample.py --input INPUT` prints (lm.answers.answer: greedy, each input alone, in float32), right =
        prediction == target. (evaluate's exact match compares tokens, decoded in batches in the run's dtype:
        it can disagree on an example, e.g. a sum with an extra leading zero, or two outputs about as likely.)
        The model's mode is left as it was."""
        return _answered(model, pairs, lambda source: answer(model, self.task, self.cfg, source, device))


def _answered(model: nn.Module, pairs: list[tuple[str, str]], predict: Callable[[str], str]) -> list[dict]:
    """{"input", "prediction", "target", "right"} of each (input, target) text, the prediction predict(input)
    (which may put the model in eval mode: its mode is restored after), right = prediction == target."""
    was_training = model.training
    try:
        predictions = [predict(source) for source, _ in pairs]
    finally:
        model.train(was_training)
    return [{"input": source, "prediction": p, "target": target, "right": p == target}
            for (source, target), p in zip(pairs, predictions)]


# ----------------------------------------------------------------------------- task graph

class GraphJob:
    """Task graph (lm.data.graphs) on a NodeClassifier: fresh random graphs every step, each node's answer
    learned with the graph's adjacency (plus self-loops) as the attention mask; fixed held-out sets of
    the trained sizes and of larger graphs (max_len+1 .. eval_long_len nodes)."""

    def __init__(self, cfg: Config, saved: dict | None, out_dir: Path, emit: Callable[[dict], None],
                 should_stop: Callable[[], bool] = lambda: False):
        self.cfg = cfg
        d = cfg.data
        # from the config, resumed too: a resume that changes the task is refused (checkpoint.check_resume_vocab)
        self.task = self.vocab = GraphTask.from_config(cfg)
        largest = max(d.max_len, d.eval_long_len)
        if cfg.model.block_size < largest:
            raise ConfigError(f"block_size: {cfg.model.block_size} is too small for graphs of up to {largest} nodes "
                              f"(max_len / eval_long_len): a node is a token, so it must be at least {largest}")
        seed = cfg.train.seed
        self.held_out = self.task.draw(d.held_out_size, d.min_len, d.max_len, seeded_generator(seed, HELD_OUT_STREAM))
        self.long = (self.task.draw(d.held_out_size, d.max_len + 1, d.eval_long_len, seeded_generator(seed, LONG_STREAM))
                     if d.eval_long_len > d.max_len else None)
        emit({"event": "task", "task": d.task, "vocab_size": self.task.vocab_size, "lengths": (d.min_len, d.max_len),
              "held_out": len(self.held_out), "long_lengths": (d.max_len + 1, d.eval_long_len) if self.long else None})

    def steps_per_epoch(self) -> None:
        return None  # fresh graphs every step: no epochs (the config must set max_iters or max_time)

    def batch(self, index: int) -> GraphBatch:
        """Training batch `index`: batch_size graphs, a pure function of (seed, index)."""
        c = self.cfg
        return self.task.draw(c.train.batch_size, c.data.min_len, c.data.max_len,
                              seeded_generator(c.train.seed, TRAIN_STREAM, index))

    def batches(self, start: int, stride: int = 1) -> Iterator:
        for index in itertools.count(start, stride):
            yield self.batch(index)

    def loss(self, model, batch: GraphBatch, device) -> tuple[torch.Tensor, int]:
        """Cross-entropy of every real node's answer; the tokens counted are the nodes."""
        nodes = int(batch.real.sum())
        b = batch.to(device)
        logits, _ = model(b.tokens, b.mask())  # (B, N, classes)
        return token_loss(logits, b.answers, ignore_index=IGNORE, label_smoothing=self.cfg.train.label_smoothing), nodes

    @torch.no_grad()
    def score(self, model, graphs: GraphBatch, device, dtype, chunk: int = 250) -> dict:
        """Loss per node, node accuracy, whole-graph exact match (every node right), and by_answer: for each
        right answer a, [nodes whose answer is a that the model got right, nodes whose answer is a]."""
        model.eval()
        loss_sum, right, nodes, exact = 0.0, 0, 0, 0
        classes = self.task.num_classes
        answered = torch.zeros(2, classes, dtype=torch.long)  # per answer: nodes right, nodes
        for i in range(0, len(graphs), chunk):
            b = graphs[i : i + chunk].to(device)
            with autocast(device, dtype):
                logits, _ = model(b.tokens, b.mask())
                loss = token_loss(logits, b.answers, ignore_index=IGNORE)
            n = int(b.real.sum())
            hit = (logits.argmax(-1) == b.answers) & b.real  # (B, N)
            loss_sum, right, nodes = loss_sum + loss.item() * n, right + int(hit.sum()), nodes + n
            exact += int((hit | ~b.real).all(dim=1).sum())
            answers = b.answers[b.real]  # (n,): the real nodes' right answers
            answered += torch.stack([torch.bincount(answers[hit[b.real]], minlength=classes),
                                     torch.bincount(answers, minlength=classes)]).cpu()
        model.train()
        by_answer = {a: [int(r), int(n)] for a, (r, n) in enumerate(answered.T.tolist()) if n}
        return {"loss": loss_sum / nodes, "node_acc": right / nodes, "exact": exact / len(graphs),
                "by_answer": by_answer}

    def evaluate(self, model, device, dtype, world: World = World()) -> dict:
        """Loss, node accuracy and whole-graph exact match on the held-out graphs, and on the larger ones
        (long_*). Every process scores them whole (they are small), so world is not needed."""
        held = self.score(model, self.held_out, device, dtype)
        out = {"val_loss": held["loss"], "val_node_acc": held["node_acc"], "val_exact": held["exact"]}
        if self.long is not None:
            long = self.score(model, self.long, device, dtype)
            out.update({"long_loss": long["loss"], "long_node_acc": long["node_acc"], "long_exact": long["exact"]})
        return out

    def final(self, model, device, dtype, world: World = World()) -> dict:
        return {f"final_{k}": v for k, v in self.evaluate(model, device, dtype).items()}

    def examples(self, model, device, dtype, n: int) -> list[dict]:
        """The first n held-out graphs: the input as sample.py --input takes it, the prediction as it prints
        it (lm.answers.graph_answer, in float32), the target written the same way."""
        task = self.task
        pairs = []
        for i in range(min(n, len(self.held_out))):
            real = self.held_out.real[i]
            pairs.append((task.render(task.graph(self.held_out, i)),
                          task.render_answers(self.held_out.answers[i][real].tolist())))
        return _answered(model, pairs, lambda source: graph_answer(model, task, source, device))


# ----------------------------------------------------------------------------- task spell

class SpellJob(Seq2SeqJob):
    """Spelling correction (task spell) on the sentences of a corpus: each training sentence is corrupted
    afresh whenever it is drawn (lm.data.noise), and the model learns to write back the clean one.

    Held-out: held_out_size sentences of the validation split, evenly spaced, with noise fixed by the
    seed. Every evaluation decodes them greedily and reports exact match, character error rate and word
    accuracy on the corrupted and on the untouched words (lm.spelling), the share of clean sentences the
    model changes, and beside them the same for the noisy input left as it is and for the classic
    dictionary corrector built from the training sentences.
    """

    def __init__(self, cfg: Config, saved: dict | None, out_dir: Path, emit: Callable[[dict], None],
                 should_stop: Callable[[], bool] = lambda: False):
        self.cfg = cfg
        d, m = cfg.data, cfg.model
        source = obtain_corpus(d.data_path)
        if source.note:
            emit({"event": "corpus_note", "note": source.note})

        def progress(event: dict) -> None:
            emit({"event": "prepare", **event})
            if should_stop():
                raise PreparationStopped

        data = prepare_sentences(source.files, out_dir / "data" / "spell", d.val_fraction, d.min_len, d.max_len,
                                 progress)
        self.train_set = data.train
        self.task = self.vocab = (SpellTask.from_state(saved["tokenizer"]) if saved else
                                  SpellTask(self._tokenizer(emit), known_words_of(self.train_set)))
        misspellings = load_misspellings() if d.misspelling_rate > 0 else None
        self.noise = NoiseModel(d.noise_rate, d.noise_edits, d.misspelling_rate, misspellings)  # the held-out set's
        self.train_noise = (self.noise if d.train_noise_rate is None else
                            NoiseModel(d.train_noise_rate, d.noise_edits, d.misspelling_rate, misspellings))
        self.clean, self.noisy = self._held_out(data.val)
        if m.block_size < d.max_len + 1:
            raise ConfigError(f"block_size: {m.block_size} is too small for sentences of up to {d.max_len} "
                              f"characters (max_len): it must be at least max_len + 1 = {d.max_len + 1}")
        corrector = DictionaryCorrector.from_sentences(self.train_set)
        corrected = [corrector.correct(s) for s in self.noisy]
        self.baselines = {**{f"noisy_{k}": v for k, v in spelling_scores(self.noisy, self.clean, self.noisy).items()},
                          **{f"dict_{k}": v for k, v in spelling_scores(corrected, self.clean, self.noisy).items()},
                          "dict_clean_changed": _changed([corrector.correct(s) for s in self.clean], self.clean)}
        self._order_epoch, self._order = -1, None
        emit({"event": "task", "task": d.task, "vocab_size": self.task.vocab_size, "lengths": (d.min_len, d.max_len),
              "held_out": len(self.clean), "long_lengths": None, "path": source.name,
              "sentences": (len(data.train), len(data.val)), "reused_cache": data.reused, **self.baselines})

    def _tokenizer(self, emit: Callable[[dict], None]):
        """A fresh run's tokenizer: char, the training sentences' characters and every letter the noise can
        write; bpe, vocab_size - 3 tokens (PAD, BOS, EOS are the others) learned from the training
        sentences (at most tokenizer_sample characters of them, from the start)."""
        d, m = self.cfg.data, self.cfg.model
        if d.tokenizer == "char":
            chars = set(string.ascii_letters)
            for s in self.train_set:
                chars.update(s)
            return CharTokenizer("".join(sorted(chars)))
        sample, size = [], 0
        for s in self.train_set:
            if size >= d.tokenizer_sample:
                break
            sample.append(s + "\n")
            size += len(s) + 1
        emit({"event": "tokenizer", "message": f"learning a byte-level BPE of {m.vocab_size - NUM_SPECIALS} tokens "
                                               f"(+ PAD, BOS, EOS) from {size:,} characters of training sentences"})
        return make_tokenizer("bpe", sample, m.vocab_size - NUM_SPECIALS)

    def _held_out(self, val: SentenceFile) -> tuple[list[str], list[str]]:
        """held_out_size sentences of the validation split, evenly spaced (those the vocabulary can encode),
        and their noisy versions, the noise of sentence i drawn from (seed, HELD_OUT_STREAM, i)."""
        n = self.cfg.data.held_out_size
        picks = sorted(set(np.linspace(0, len(val) - 1, min(n, len(val))).round().astype(int).tolist()))
        clean = [val[i] for i in picks]
        clean = [s for s in clean if not self.task.unknown_characters(s)]
        if not clean:
            raise DataError("no sentence of the validation split can be written with the training split's "
                            "characters; use a longer corpus")
        seed = self.cfg.train.seed
        noisy = [self.noise.corrupt(s, _rng(seed, HELD_OUT_STREAM, i)).noisy for i, s in enumerate(clean)]
        return clean, noisy

    def steps_per_epoch(self) -> float:
        """One epoch = every training sentence once, in epoch_batches(epoch)."""
        return self.batches_per_epoch / self.cfg.train.grad_accum

    @property
    def batches_per_epoch(self) -> int:
        n, b = len(self.train_set), self.cfg.train.batch_size
        chunk = b * BUCKET_BATCHES
        return (n // chunk) * BUCKET_BATCHES + math.ceil((n % chunk) / b)

    def epoch_batches(self, epoch: int) -> list[torch.Tensor]:
        """The training sentences' indices, batch by batch, for one epoch: shuffled (seed, epoch), then each
        run of BUCKET_BATCHES batches' worth sorted by length and cut into batches (so a batch holds
        sentences of similar length and little padding), and the batches shuffled."""
        n, b = len(self.train_set), self.cfg.train.batch_size
        g = seeded_generator(self.cfg.train.seed, ORDER_STREAM, epoch)
        order = torch.randperm(n, generator=g)
        lengths = torch.from_numpy(np.diff(self.train_set.offsets.astype(np.int64)))  # (n,) bytes per line
        batches = []
        for start in range(0, n, b * BUCKET_BATCHES):
            run = order[start : start + b * BUCKET_BATCHES]
            run = run[torch.argsort(lengths[run], stable=True)]
            batches += list(run.split(b))
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def _batch_sentences(self, index: int) -> list[str]:
        """The sentences of training batch `index`: batch index % batches_per_epoch of its epoch."""
        epoch, i = divmod(index, self.batches_per_epoch)
        if epoch != self._order_epoch:
            self._order = self.epoch_batches(epoch)
            self._order_epoch = epoch
        return [self.train_set[int(k)] for k in self._order[i]]

    def pair(self, clean: str, noisy: str) -> tuple[list[int], list[int]]:
        """(source ids, target ids) of a sentence and its noisy version, each cut to fit block_size."""
        b = self.cfg.model.block_size
        return self.task.encode(noisy)[:b], self.task.encode(clean)[: b - 1]

    def batch(self, index: int) -> tuple:
        """Training batch `index` (epoch_batches), each sentence corrupted by noise drawn from (seed,
        TRAIN_STREAM, index): fresh noise every time a sentence is drawn, a pure function of (seed, index)."""
        c = self.cfg
        rng = _rng(c.train.seed, TRAIN_STREAM, index)
        pairs = [self.pair(clean, self.train_noise.corrupt(clean, rng).noisy)
                 for clean in self._batch_sentences(index)]
        src_pos, tgt_pos = self.positions(pairs, torch.Generator().manual_seed(rng.getrandbits(63)))
        if tgt_pos is not None:
            tgt_pos = tgt_pos[:, : max(len(t) for _, t in pairs) + 1]
        return (*collate(pairs), src_pos, tgt_pos)

    @torch.no_grad()
    def correct(self, model, sentences: list[str], device, dtype, chunk: int = 256) -> list[str]:
        """The model's greedy correction of each sentence (sentences of similar length decoded together)."""
        model.eval()
        b = self.cfg.model.block_size
        encoded = [self.task.encode(s)[:b] for s in sentences]
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out = [""] * len(encoded)
        for start in range(0, len(order), chunk):
            rows = order[start : start + chunk]
            src, src_mask = pad_sequences([encoded[i] for i in rows], PAD)
            src, src_mask = src.to(device), src_mask.to(device)
            src_pos, tgt_pos = (_to(t, device) for t in self.positions([(encoded[i], []) for i in rows]))
            longest = src.size(1)
            with autocast(device, dtype):
                ids = greedy_decode(model, src, src_mask, min(b, self.task.target_slots([0] * longest)), BOS, EOS,
                                    PAD, src_pos=src_pos, tgt_pos=tgt_pos)
                outputs = [row[: row.index(EOS)] if EOS in row else row for row in ids.tolist()]
                keep = keeps_input(model, src, src_mask, [encoded[i] for i in rows], outputs, self.cfg.data.copy_margin,
                                   b, src_pos, tgt_pos)  # copy_margin: the input kept where the model is unsure
            for i, row, kept in zip(rows, outputs, keep):
                out[i] = self.task.render(self.task.from_ids(encoded[i] if kept else row))
        model.train()
        return out

    @torch.no_grad()
    def held_out_loss(self, model, device, dtype, chunk: int = 256) -> float:
        """Teacher-forced loss per target token on the held-out (noisy -> clean) pairs."""
        model.eval()
        pairs = [self.pair(c, n) for c, n in zip(self.clean, self.noisy)]
        total, count = 0.0, 0
        for i in range(0, len(pairs), chunk):
            part = pairs[i : i + chunk]
            src, src_mask, tgt_in, tgt_out = (t.to(device) for t in collate(part))
            src_pos, tgt_pos = (_to(t, device) for t in self.positions(part))
            with autocast(device, dtype):
                logits, _ = model(src, tgt_in, src_mask, src_pos=src_pos,
                                  tgt_pos=None if tgt_pos is None else tgt_pos[:, : tgt_in.size(1)])
                loss = token_loss(logits, tgt_out, ignore_index=PAD)
            n_real = int((tgt_out != PAD).sum())
            total, count = total + loss.item() * n_real, count + n_real
        model.train()
        return total / count

    def evaluate(self, model, device, dtype, world: World = World()) -> dict:
        """The held-out metrics (see the class docstring): val_* after correction_filter, raw_* of the model's
        output as it is; every process computes them whole."""
        outputs = self.correct(model, self.noisy, device, dtype)
        unchanged = self.correct(model, self.clean, device, dtype)
        out = {"val_loss": self.held_out_loss(model, device, dtype)}
        for prefix, keep in (("raw", False), ("val", self.cfg.data.correction_filter == "known_words")):
            fixed = [self.task.keep_known_changes(s, o) for s, o in zip(self.noisy, outputs)] if keep else outputs
            kept = [self.task.keep_known_changes(s, o) for s, o in zip(self.clean, unchanged)] if keep else unchanged
            out.update({f"{prefix}_{k}": v for k, v in spelling_scores(fixed, self.clean, self.noisy).items()})
            out[f"{prefix}_clean_changed"] = _changed(kept, self.clean)
        return {**out, **self.baselines}

    def examples(self, model, device, dtype, n: int) -> list[dict]:
        """The first n held-out sentences: the noisy one as input, the clean one as target, the prediction
        sample.py's correction of the noisy one (correction_filter applied, lm.answers)."""
        return self.answers(model, device, list(zip(self.noisy[:n], self.clean[:n])))


def _rng(*key: int) -> random.Random:
    """A Python random generator determined by a tuple of non-negative ints (through seeded_generator)."""
    return random.Random(int(torch.randint(2**62, (1,), generator=seeded_generator(*key))))


def _changed(outputs: list[str], clean: list[str]) -> float:
    """Share of clean sentences that the corrector changed."""
    return sum(o != c for o, c in zip(outputs, clean)) / len(clean)


def make_job(cfg: Config, saved: dict | None, out_dir: Path, emit: Callable[[dict], None],
             should_stop: Callable[[], bool] = lambda: False) -> Job:
    """The job for cfg.data.task. should_stop() is asked while a corpus is prepared (PreparationStopped)."""
    job = {"lm": LanguageModelJob, "spell": SpellJob, "graph": GraphJob}.get(cfg.data.task, Seq2SeqJob)
    return job(cfg, saved, out_dir, emit, should_stop)
