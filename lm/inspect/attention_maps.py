"""What a trained model attends to, for one input: its tokens and every attention map, ready to draw.

``record(model, vocab, cfg, text, device)`` runs the model once with ``return_weights=True`` (see
lm.nn.models.AttentionMaps) and returns an AttentionRecord:

    language model   the text's characters, and decoder_self (causal) maps over them
    graph task       the graph's nodes, their answers, encoder_self maps (node x node) and the mask
                     they were computed under (adjacency + self-loops): a masked cell's weight is 0
    seq2seq task     the source, the greedy output, and the teacher-forced pass over BOS + output:
                     encoder_self (source x source), decoder_self (decoder input x decoder input)
                     and cross (decoder input x source). Counting from 0, decoder input i (input 0
                     is BOS) is the query that predicts output token i, so a copy model's
                     cross-attention is a diagonal. Without EOS (decoding stopped at its limit)
                     the last output token is nobody's input and has no row.

``AttentionRecord.to_json()`` is the content of attention.json (and of the explorer page):

    {"kind": "lm" | "seq2seq" | "graph", "tokens": [...] or {"source": [...], "target": [...]},
     "attentions": {"encoder_self" | "decoder_self" | "cross": [layer][head][query][key]},
     "stats": {kind: {"distance": [layer][head], "entropy": [layer][head]}},
     "config": {"task": ..., the model's settings}, "output": the decoded output (seq2seq) or the answers
     (graph), "mask": [query][key] 1 where attention is allowed, 0 where masked (graph)}

Layers and heads count from 0. Differential attention's maps are signed (see AttentionMaps).

How a head has specialised, in two numbers per head (``head_stats``), from its weights w[q, k] made a
distribution per row, p[q, k] = |w[q, k]| / sum_k' |w[q, k']| (standard attention: p = w; differential
attention's signed rows by their magnitudes):

    distance   mean over query rows q of sum_k p[q, k] |q - k|, in positions: 0 for a head that looks at
               its own position (a copy model's cross-attention: target position i reads source position
               i), 1 for one that looks one back; cross-attention counts the same index offset
    entropy    mean over rows of -sum_k p[q, k] ln p[q, k], in nats (0 ln 0 = 0): 0 for a head that looks
               at one key per row, ln n for one that spreads evenly over n keys

Across checkpoints, ``Frame`` is one checkpoint's record with its step and label; attention.json then is
{"frames": [{"step": ..., "label": ..., "checkpoint": path, <record.to_json()>}, ...], "view": ...}.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ..generate import greedy_decode, prepare_source
from ..data.tasks import BOS, EOS, PAD
from ..data.tokenizer import UnknownCharactersError

DECIMALS = 5  # weights (and head stats) in attention.json are rounded to this many decimals


def _rounded(a: np.ndarray) -> list:
    return np.round(a.astype(np.float64), DECIMALS).tolist()


@dataclass
class AttentionRecord:
    kind: str  # "lm" or "seq2seq"
    tokens: list[str] | dict[str, list[str]]  # lm: the text's tokens; seq2seq: {"source": ..., "target": ...}
    maps: dict[str, np.ndarray]  # attention kind -> (layers, heads, T_q, T_k) float32
    config: dict  # {"task": ..., the model's settings}
    output: str | None = None  # seq2seq: the decoded output, as the task writes it; graph: the answers
    ended: bool = True  # seq2seq: whether decoding ended with EOS (False: it stopped at its length limit)
    mask: np.ndarray | None = None  # graph: (N, N) bool, where encoder_self may attend (adjacency + self-loops)

    def axes(self, kind: str) -> tuple[list[str], list[str]]:
        """(query tokens, key tokens) of an attention kind."""
        if self.kind in ("lm", "graph"):
            return self.tokens, self.tokens
        source, target = self.tokens["source"], self.tokens["target"]
        return {"encoder_self": (source, source), "decoder_self": (target, target), "cross": (target, source)}[kind]

    @property
    def signed(self) -> bool:
        """Whether weights can be negative (differential attention, or any negative weight): plots then
        centre their colours on 0."""
        return self.config.get("attention") == "differential" or any(bool((m < 0).any()) for m in self.maps.values())

    def stats(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """kind -> (distance, entropy) of every head, each (layers, heads): see head_stats."""
        return {kind: head_stats(m) for kind, m in self.maps.items()}

    def to_json(self) -> dict:
        data = {"kind": self.kind, "tokens": self.tokens,
                "attentions": {k: _rounded(m) for k, m in self.maps.items()},
                "stats": {k: {"distance": _rounded(d), "entropy": _rounded(h)} for k, (d, h) in self.stats().items()},
                "config": self.config}
        if self.output is not None:
            data["output"] = self.output
        if self.mask is not None:
            data["mask"] = self.mask.astype(int).tolist()
        return data


@dataclass
class Frame:
    """One checkpoint's record, in a series over training: its step, a label for it (e.g. "step 300 ·
    exact 87.0%") and the checkpoint file it came from."""

    step: int
    label: str
    record: AttentionRecord
    checkpoint: str = ""

    def to_json(self) -> dict:
        return {"step": self.step, "label": self.label, "checkpoint": self.checkpoint, **self.record.to_json()}


def head_stats(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean attention distance, mean row entropy) of every head of maps (layers, heads, T_q, T_k), each
    (layers, heads) float64, with p = |w| / sum_k |w| made a distribution per row:

        distance = mean_q sum_k p[q, k] |q - k|        (positions)
        entropy  = mean_q -sum_k p[q, k] ln p[q, k]    (nats, 0 ln 0 = 0)

    A row without any weight counts 0 in both."""
    w = np.abs(maps.astype(np.float64))  # (L, H, T_q, T_k)
    total = w.sum(-1, keepdims=True)  # (L, H, T_q, 1)
    p = w / np.where(total > 0, total, 1.0)  # (L, H, T_q, T_k), rows sum to 1 (or are all 0)
    T_q, T_k = maps.shape[-2:]
    offset = np.abs(np.arange(T_q)[:, None] - np.arange(T_k)[None, :])  # (T_q, T_k): |q - k|
    distance = (p * offset).sum(-1).mean(-1)  # (L, H)
    logs = np.log(np.where(p > 0, p, 1.0))  # ln p, and ln 1 = 0 where p = 0 (0 ln 0 = 0)
    entropy = -(p * logs).sum(-1).mean(-1) + 0.0  # (L, H); + 0.0 turns -0.0 into 0.0
    return distance, entropy


def _stack(maps) -> dict[str, np.ndarray]:
    """AttentionMaps of a batch of one -> kind -> (layers, heads, T_q, T_k) array; ValueError if any
    weight is not finite (the checkpoint's weights are then broken: nothing could be drawn from them)."""
    out = {kind: torch.stack([w[0] for w in layers]).float().cpu().numpy() for kind, layers in maps.kinds().items()}
    bad = [kind for kind, m in out.items() if not np.isfinite(m).all()]
    if bad:
        raise ValueError(f"the model's attention weights are not finite (NaN or infinite) in {', '.join(bad)}: "
                         f"the checkpoint's weights are broken")
    return out


def _settings(cfg) -> dict:
    extra = ({"grid_op": cfg.data.grid_op} if cfg.data.task == "grid" else
             {"graph_op": cfg.data.graph_op} if cfg.data.task == "graph" else {})
    return {"task": cfg.data.task, **extra, **asdict(cfg.model)}


@torch.no_grad()
def record_text(model, tokenizer, cfg, text: str, device) -> AttentionRecord:
    """A language model's attention over text (at most block_size characters)."""
    if not text:
        raise ValueError("the text is empty; give at least one character")
    try:
        ids = tokenizer.encode(text).tolist()
    except UnknownCharactersError as e:
        raise ValueError(f"the text cannot be encoded: {e}") from None
    if len(ids) > cfg.model.block_size:
        raise ValueError(f"the text has {len(ids)} characters; this model attends over at most "
                         f"{cfg.model.block_size} (block_size): give a shorter text")
    model.eval()
    idx = torch.tensor(ids, dtype=torch.long, device=device)[None]  # (1, T)
    _, maps = model(idx, return_weights=True)
    tokens = [tokenizer.decode([i]) for i in ids]
    return AttentionRecord("lm", tokens, _stack(maps), _settings(cfg))


@torch.no_grad()
def record_input(model, task, cfg, text: str, device) -> AttentionRecord:
    """A seq2seq model's attention for one source: decode it greedily, then one teacher-forced pass."""
    model.eval()
    source = prepare_source(task, cfg, text, device)
    out = greedy_decode(model, source.src, source.mask, source.max_len, BOS, EOS, PAD,
                        src_pos=source.src_pos, tgt_pos=source.tgt_pos)[0].tolist()
    ended = EOS in out
    if ended:
        out = out[: out.index(EOS)]
    tgt_in = ([BOS] + out)[: source.max_len]  # the decoder inputs that produced out (and its EOS)
    tgt = torch.tensor(tgt_in, dtype=torch.long, device=device)[None]  # (1, T)
    tgt_pos = None if source.tgt_pos is None else source.tgt_pos[:, : tgt.size(1)]
    _, maps = model(source.src, tgt, source.mask, src_pos=source.src_pos, tgt_pos=tgt_pos, return_weights=True)
    tokens = {"source": task.token_texts(source.ids), "target": task.token_texts(tgt_in)}
    return AttentionRecord("seq2seq", tokens, _stack(maps), _settings(cfg), output=task.render(task.from_ids(out)),
                           ended=ended)


@torch.no_grad()
def record_graph(model, task, cfg, text: str, device) -> AttentionRecord:
    """Task graph: the encoder's attention over a graph written as text (lm.data.graphs), one row and one
    column per node, with the mask it attended under (adjacency + self-loops) and its answers."""
    model.eval()
    graph = task.parse(text)
    batch = task.encode(graph).to(device)
    mask = batch.mask()
    logits, maps = model(batch.tokens, mask, return_weights=True)
    return AttentionRecord("graph", task.node_texts(graph), _stack(maps), _settings(cfg),
                           output=task.render_answers(logits[0].argmax(-1).tolist()), mask=mask[0].cpu().numpy())


def record(model, vocab, cfg, text: str, device) -> AttentionRecord:
    """record_text for a language model (vocab: its tokenizer), record_graph for task graph, record_input for
    a seq2seq task (vocab: the Task)."""
    if cfg.data.task == "lm":
        return record_text(model, vocab, cfg, text, device)
    if cfg.data.task == "graph":
        return record_graph(model, vocab, cfg, text, device)
    return record_input(model, vocab, cfg, text, device)
