"""Autoregressive sampling from a decoder: temperature, top-k, top-p, with a key/value cache."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .data.layout import positions
from .data.tasks import BOS, EOS, PAD


def check_sampling(temperature: float, top_k: int | None, top_p: float | None, max_new_tokens: int) -> None:
    """Raise ValueError naming any sampling setting outside its allowed range."""
    if not temperature >= 0:
        raise ValueError(f"temperature {temperature} is not allowed; it must be >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k {top_k} is not allowed; it must be >= 1 (or omitted for no limit)")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p {top_p} is not allowed; it must be in (0, 1]")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens {max_new_tokens} is not allowed; it must be >= 0")


def filter_logits(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None) -> torch.Tensor:
    """Set to -inf every logit outside the top-k and outside the nucleus (top-p). logits: (B, V).

    top-k keeps exactly k tokens even when logits tie. top-p keeps the smallest set of most
    likely tokens whose probabilities sum to at least p (always at least one token).
    """
    if top_k is not None and top_k < logits.size(-1):
        keep = torch.topk(logits, top_k, dim=-1).indices  # (B, k)
        kept = torch.full_like(logits, float("-inf"))
        logits = kept.scatter(-1, keep, logits.gather(-1, keep))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(sorted_logits, dim=-1)
        before = torch.cumsum(probs, dim=-1) - probs  # mass of the tokens ranked above each one
        drop_sorted = before >= top_p  # the first token has before = 0 and is always kept
        drop = drop_sorted.scatter(-1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


# one random generator for a whole batch, or one per row (sample_next)
Generators = torch.Generator | Sequence[torch.Generator] | None


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: Generators = None) -> torch.Tensor:
    """Choose the next token from last-position logits (B, V); returns (B, 1). temperature 0 = greedy.

    generator: one torch.Generator for the whole batch, or a sequence of B, one per row: row i then
    draws from generator[i] alone, with the same call as a batch of one, so its draw does not depend
    on the other rows."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)  # no softmax, no float copy: the argmax of the logits
    logits = logits.float()  # no copy when they are float32 already
    if temperature != 1.0:  # x / 1 == x exactly: skip the division
        logits = logits / temperature
    probs = torch.softmax(filter_logits(logits, top_k, top_p), dim=-1)  # (B, V)
    if generator is None or isinstance(generator, torch.Generator):
        return torch.multinomial(probs, 1, generator=generator)
    draws = [torch.multinomial(probs[i : i + 1], 1, generator=g) for i, g in enumerate(generator)]  # B x (1, 1)
    return torch.cat(draws)  # (B, 1)


def _check_generators(generator: Generators, rows: int) -> None:
    if generator is None or isinstance(generator, torch.Generator):
        return
    if len(generator) != rows:
        raise ValueError(f"{len(generator)} generators for a batch of {rows} rows: give one per row, or one")


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: Generators = None,
             use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens new tokens (each (B, 1)) continuing idx (B, T), one at a time.

    The model always sees at most its last block_size tokens, at positions 0..block_size-1.
    With use_cache, each step feeds only the newest token while the context fits in
    block_size. Once it no longer fits, the window slides and every position shifts, so
    (with absolute positional encodings) the window is recomputed in full each step; the
    tokens are the same as with use_cache=False.

    generator: one for the batch, or one per row (see sample_next). With one per row, row i gets
    the random draws it would get alone (idx[i:i+1] with generator[i]); its logits can still differ
    from the lone run's in the last float bits (matrix products of B rows and of one row may round
    differently), which changes a token only where two choices are that close (see docs/cli.md: --num_samples).

    The context lives in one (B, T + max_new_tokens) buffer, allocated once, that each new token is
    written into in place: the growing context is never concatenated or copied per token.
    """
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    B, T = idx.shape
    if T == 0:
        raise ValueError("the prompt is empty: give at least one token")
    _check_generators(generator, B)
    model.eval()
    block_size = model.cfg.block_size
    tokens = idx.new_empty(B, T + max_new_tokens)  # (B, T + max_new_tokens): the prompt, then each new token
    tokens[:, :T] = idx
    cache = model.new_cache() if use_cache else None
    for t in range(T, T + max_new_tokens):  # t: the tokens so far
        if cache is not None and t <= block_size:
            new = tokens[:, :t] if t == T else tokens[:, t - 1 : t]  # prefill the prompt, then the newest token
            logits, _ = model(new, cache=cache, last_only=True)  # (B, 1, V)
        else:
            logits, _ = model(tokens[:, max(0, t - block_size) : t], last_only=True)  # (B, 1, V)
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B, 1)
        tokens[:, t : t + 1] = nxt
        yield nxt


# ----------------------------------------------------------------------------- encoder-decoder decoding

@dataclass
class Source:
    """One source sequence, ready to decode as evaluation does (sample.py, visualize.py)."""

    symbols: list[int]  # the source as the task parsed it (symbols, before the special tokens' offset)
    ids: list[int]  # the source's token ids
    src: torch.Tensor  # (1, S) the same, as a batch of one
    mask: torch.Tensor  # (1, S) True at every (real) token
    src_pos: torch.Tensor | None  # (1, S, ...) explicit positions (lm.data.layout), or None for consecutive ones
    tgt_pos: torch.Tensor | None  # (1, L, ...) positions of every decoder input, or None
    max_len: int  # the most output tokens to decode (EOS included)


def prepare_source(task, cfg, text: str, device) -> Source:
    """Parse a source written as the task writes it ("5 7 9 2", "123+45", "012/340/567") for the model
    of config cfg; ValueError when it cannot be parsed or does not fit the model's block_size."""
    symbols = task.parse(text)
    src_ids = task.to_ids(symbols)
    block_size = cfg.model.block_size
    if len(src_ids) > block_size:
        raise ValueError(f"the input has {len(src_ids)} tokens; this model takes at most {block_size} (block_size)")
    src = torch.tensor(src_ids, dtype=torch.long, device=device)[None]  # (1, S)
    # the positions evaluation uses (lm.data.layout): None for consecutive ones; with explicit ones,
    # decoding stops after as many tokens as the task's output can have
    src_pos, tgt_pos = (None if t is None else t.to(device)
                        for t in positions(task, cfg.model.pos_encoding, [src_ids], block_size))
    if tgt_pos is not None and tgt_pos.size(1) > block_size:
        raise ValueError(f"the output of this input needs {tgt_pos.size(1)} positions; this model has "
                         f"{block_size} (block_size)")
    max_len = block_size if tgt_pos is None else tgt_pos.size(1)
    return Source(symbols, src_ids, src, torch.ones_like(src, dtype=torch.bool), src_pos, tgt_pos, max_len)


def _decoder_step(model, ys, memory, src_mask, cache, tgt_pos=None):
    """Logits for the next token (B, V): with a cache feed only the newest token, else the whole prefix.
    tgt_pos: (B, L, ...) positions of every decoder input (None: consecutive)."""
    t = ys.size(1)
    if cache is not None:
        pos = None if tgt_pos is None else tgt_pos[:, t - 1 : t]
        logits, _ = model.decode(ys[:, -1:], memory, src_mask, cache=cache, pos=pos)
    else:
        pos = None if tgt_pos is None else tgt_pos[:, :t]
        logits, _ = model.decode(ys, memory, src_mask, pos=pos)
    return logits[:, -1].float()


def _decoding_steps(max_len: int, tgt_pos: torch.Tensor | None) -> int:
    """At most max_len tokens, and no more than tgt_pos has positions for."""
    return max_len if tgt_pos is None else min(max_len, tgt_pos.size(1))


@torch.no_grad()
def greedy_decode(model, src: torch.Tensor, src_mask: torch.Tensor | None, max_len: int, bos: int, eos: int,
                  pad: int, use_cache: bool = True, src_pos: torch.Tensor | None = None,
                  tgt_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Most likely token at each step, until every row has produced EOS or max_len tokens.

    src: (B, S). Returns (B, L) generated tokens (EOS included, PAD after it). The source's
    cross-attention keys/values are computed once and kept in the cache. src_pos, tgt_pos: positions
    of the source and of every decoder input (lm.data.layout; None = consecutive); decoding stops after
    as many tokens as tgt_pos has positions.
    """
    model.eval()
    B = src.size(0)
    max_len = _decoding_steps(max_len, tgt_pos)
    memory = model.encode(src, src_mask, src_pos)  # (B, S, C)
    ys = torch.full((B, 1), bos, dtype=torch.long, device=src.device)
    cache = model.new_cache() if use_cache else None
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    for _ in range(max_len):
        nxt = _decoder_step(model, ys, memory, src_mask, cache, tgt_pos).argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
        ys = torch.cat([ys, nxt[:, None]], dim=1)
        done |= nxt == eos
        if done.all():
            break
    return ys[:, 1:]


@torch.no_grad()
def score_targets(model, src: torch.Tensor, src_mask: torch.Tensor | None, targets: list[list[int]], bos: int,
                  eos: int, pad: int, src_pos: torch.Tensor | None = None,
                  tgt_pos: torch.Tensor | None = None) -> torch.Tensor:
    """log p(y | x) of one target per source row, teacher-forced: the sum over t of log p(y_t | y_<t, x)
    over the target's tokens and its EOS. src: (B, S); targets: B id lists (without BOS or EOS);
    tgt_pos: positions of the decoder inputs, (B, >= longest target + 1), or None. Returns (B,) float32."""
    model.eval()
    T = max(len(t) for t in targets) + 1
    tgt_in = torch.full((len(targets), T), pad, dtype=torch.long)  # (B, T): BOS + target, padded
    tgt_out = torch.full((len(targets), T), pad, dtype=torch.long)  # (B, T): target + EOS, padded
    for i, t in enumerate(targets):
        tgt_in[i, : len(t) + 1] = torch.tensor([bos, *t])
        tgt_out[i, : len(t) + 1] = torch.tensor([*t, eos])
    tgt_in, tgt_out = tgt_in.to(src.device), tgt_out.to(src.device)
    logits, _ = model(src, tgt_in, src_mask, src_pos=src_pos, tgt_pos=None if tgt_pos is None else tgt_pos[:, :T])
    logp = torch.log_softmax(logits.float(), dim=-1).gather(-1, tgt_out[..., None])[..., 0]  # (B, T)
    return (logp * (tgt_out != pad)).sum(dim=1)


def keeps_input(model, src: torch.Tensor, src_mask: torch.Tensor | None, inputs: list[list[int]],
                outputs: list[list[int]], margin: float | None, block_size: int, src_pos: torch.Tensor | None = None,
                tgt_pos: torch.Tensor | None = None) -> list[bool]:
    """Decoding that favours copying (task spell's copy_margin): for each row, whether to keep the input x
    rather than the decoded output y, because the model does not find y more likely by the margin:

        keep x  unless  log p(y | x) - log p(x | x) >= margin     (both teacher-forced, score_targets)

    inputs, outputs: the rows' input and output ids (without EOS). A row whose output is its input, or
    whose input is too long to be a target (block_size - 1 tokens), keeps the output; so does every row
    when margin is None (no copy_margin)."""
    differ = [i for i, (x, y) in enumerate(zip(inputs, outputs)) if x != y and len(x) < block_size]
    keep = [False] * len(inputs)
    if margin is None or not differ:
        return keep
    rows = torch.tensor(differ, device=src.device)
    sub_src, sub_mask = src[rows], None if src_mask is None else src_mask[rows]
    sub_src_pos, sub_tgt_pos = (None if p is None else p[rows] for p in (src_pos, tgt_pos))
    score = [score_targets(model, sub_src, sub_mask, [seqs[i] for i in differ], BOS, EOS, PAD, src_pos=sub_src_pos,
                           tgt_pos=sub_tgt_pos) for seqs in (outputs, inputs)]
    for i, gain in zip(differ, (score[0] - score[1]).tolist()):
        keep[i] = gain < margin
    return keep


def length_penalty(length: torch.Tensor, alpha: float) -> torch.Tensor:
    """GNMT length normalisation (Wu et al. 2016): lp(Y) = ((5 + |Y|) / 6) ** alpha; alpha 0 = none."""
    return ((5.0 + length.float()) / 6.0) ** alpha


def _future_bound(live_scores: torch.Tensor, length: int, max_len: int, alpha: float) -> torch.Tensor:
    """The best normalised score any continuation of live hypotheses of `length` tokens could reach.

    A continuation finishing at length L in length+1..max_len scores s' <= s <= 0 (log-probabilities
    only add terms <= 0), so s' / lp(L) <= s / max_L lp(L); lp is monotonic, so the max is at an end.
    """
    lp = torch.tensor([length + 1, max_len], device=live_scores.device)
    return live_scores / length_penalty(lp, alpha).max()


@torch.no_grad()
def beam_search(model, src: torch.Tensor, src_mask: torch.Tensor | None, max_len: int, bos: int, eos: int,
                pad: int, beam: int = 4, alpha: float = 0.6, use_cache: bool = True,
                src_pos: torch.Tensor | None = None, tgt_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Beam search for argmax_Y log P(Y | X) / lp(Y), with lp(Y) = ((5 + |Y|) / 6) ** alpha (GNMT).

    Per source, `beam` (K) live (unfinished) hypotheses. At step t every live hypothesis is extended
    by every token, and the K best extensions by log P are taken (all have t tokens, so this is also
    their order by normalised score). Those that end in EOS leave the beam and become finished
    hypotheses, scored log P / lp(t); the live slots go to the K best extensions without EOS, so
    finished hypotheses never hold a slot. A source stops when no live hypothesis can beat its best
    finished one (see _future_bound), or at max_len tokens. K = 1 with alpha = 0 is greedy decoding;
    a K at least the number of extensions at every step searches exhaustively.

    src: (B, S). Returns (B, L): per source the best finished hypothesis by normalised score (the
    best live one if none finished), EOS included, PAD after it. The K live hypotheses of all
    sources are rows of one (B * K) batch; after each step the cache follows the surviving rows.
    src_pos, tgt_pos: positions as for greedy_decode (a source's K hypotheses share them).
    The search's state and its steps are in _Beams.
    """
    if beam < 1:
        raise ValueError(f"beam {beam} is not allowed; it must be >= 1")
    B, K = src.size(0), beam
    max_len = _decoding_steps(max_len, tgt_pos)
    if max_len < 1:
        return src.new_full((B, 0), pad)
    model.eval()
    memory = model.encode(src, src_mask, src_pos).repeat_interleave(K, dim=0)  # (B*K, S, C)
    if tgt_pos is not None:
        tgt_pos = tgt_pos.repeat_interleave(K, dim=0)  # (B*K, L, ...): a source's hypotheses share positions
    mask = src_mask.repeat_interleave(K, dim=0) if src_mask is not None else None  # (B*K, S)
    beams = _Beams.start(B, K, max_len, alpha, bos, eos, pad, src.device)
    cache = model.new_cache() if use_cache else None
    for t in range(1, max_len + 1):
        logp = torch.log_softmax(_decoder_step(model, beams.ys, memory, mask, cache, tgt_pos), dim=-1)  # (B*K, V)
        rows = beams.step(logp, t)  # (B*K,) the row each new live hypothesis extends
        if cache is not None:
            for layer in cache:
                layer.reorder(rows)
        if beams.stop(t):
            break
    return beams.result()


@dataclass
class _Beams:
    """The state of beam_search over B sources, K live hypotheses each, and its steps.

    The live hypotheses of all sources are rows of one (B * K) batch, source b's in rows b*K to
    b*K + K - 1. A finished hypothesis leaves the beam; only each source's best one is kept.
    """

    K: int  # live hypotheses per source
    max_len: int  # the most tokens a hypothesis may have (EOS included)
    alpha: float  # length penalty exponent (length_penalty)
    eos: int
    pad: int
    ys: torch.Tensor  # (B*K, t + 1) live hypotheses after t steps, BOS first
    scores: torch.Tensor  # (B, K) their log P; -inf in a slot holding no hypothesis
    best: torch.Tensor  # (B,) best finished normalised score per source; -inf while none finished
    best_out: torch.Tensor  # (B, max_len) that hypothesis' tokens, EOS included, PAD after it
    done: torch.Tensor  # (B,) sources whose search has stopped
    first: torch.Tensor  # (B, 1) row of each source's first hypothesis

    @classmethod
    def start(cls, B: int, K: int, max_len: int, alpha: float, bos: int, eos: int, pad: int, device) -> _Beams:
        """Before the first step: each source's K hypotheses are the same empty one (BOS), so only the
        first is expanded (the others score -inf) and the first step does not pick each extension K times."""
        ys = torch.full((B * K, 1), bos, dtype=torch.long, device=device)
        scores = torch.full((B, K), float("-inf"), device=device)
        scores[:, 0] = 0.0
        best = torch.full((B,), float("-inf"), device=device)
        best_out = torch.full((B, max_len), pad, dtype=torch.long, device=device)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        first = torch.arange(B, device=device)[:, None] * K
        return cls(K, max_len, alpha, eos, pad, ys, scores, best, best_out, done, first)

    def step(self, logp: torch.Tensor, t: int) -> torch.Tensor:
        """Step t: extend the live hypotheses by every token (logp: (B*K, V) log-probabilities of each
        one's next token), keep an EOS one that beats its source's best finished one, and fill the live
        slots with the best extensions without EOS. Returns (B*K,) the row each new live hypothesis
        extends (the rows the cache must follow)."""
        top, token, parent = self._best_extensions(logp)
        is_eos = token == self.eos
        self._keep_finished(top, is_eos, parent, t)
        return self._keep_live(top, token, is_eos, parent)

    def _best_extensions(self, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per source, the 2K best extensions by log P, best first: (B, 2K) their scores, tokens and
        parents (the slot, 0..K-1, of the hypothesis each extends). At most K of them end in EOS (one
        per live hypothesis), so they hold K without EOS."""
        B, K, V = self.scores.size(0), self.K, logp.size(-1)
        # (B*K, 1) + (B*K, V) -> (B, K*V): a source's every extension in one row, index = slot * V + token
        candidates = (self.scores.view(B * K, 1) + logp).view(B, K * V)
        top, flat = candidates.topk(min(2 * K, K * V), dim=-1)  # (B, 2K), best first
        return top, flat % V, flat // V

    def _keep_finished(self, top: torch.Tensor, is_eos: torch.Tensor, parent: torch.Tensor, t: int) -> None:
        """An EOS extension among a source's K best finishes a hypothesis of t tokens, scored
        log P / lp(t); the best of them replaces the source's best finished one if it scores higher
        (and the source has not stopped)."""
        device = top.device
        B = top.size(0)
        ranked = torch.arange(top.size(1), device=device) < self.K  # (2K,)
        fin = torch.where(is_eos & ranked, top / length_penalty(torch.tensor(t), self.alpha), float("-inf"))
        fin_best, j = fin.max(dim=-1)  # (B,)
        better = (fin_best > self.best) & ~self.done
        if better.any():
            rows = (self.first[:, 0] + parent[torch.arange(B, device=device), j])[better]
            out = torch.full((int(better.sum()), self.max_len), self.pad, dtype=torch.long, device=device)
            out[:, : t - 1] = self.ys[rows, 1:]
            out[:, t - 1] = self.eos
            self.best_out[better] = out
            self.best = torch.where(better, fin_best, self.best)

    def _keep_live(self, top: torch.Tensor, token: torch.Tensor, is_eos: torch.Tensor,
                   parent: torch.Tensor) -> torch.Tensor:
        """The new live hypotheses: the K best extensions without EOS, in order (a stable sort moves
        the EOS ones last); a slot left with score -inf gets PAD. Returns (B*K,) the row each extends."""
        keep = torch.sort(is_eos.to(torch.uint8), dim=-1, stable=True).indices[:, : self.K]  # (B, K)
        self.scores = top.gather(1, keep)  # (B, K)
        tokens = token.gather(1, keep).masked_fill(self.scores == float("-inf"), self.pad)  # (B, K)
        rows = (self.first + parent.gather(1, keep)).view(-1)  # (B, K) -> (B*K,) the surviving hypotheses' rows
        self.ys = torch.cat([self.ys[rows], tokens.view(-1, 1)], dim=1)  # (B*K, t + 1)
        return rows

    def stop(self, t: int) -> bool:
        """After step t: mark the sources where no live hypothesis can beat the best finished one
        (_future_bound; at max_len every source stops anyway). True once every source has stopped."""
        if t < self.max_len:
            self.done |= self.best >= _future_bound(self.scores.max(dim=-1).values, t, self.max_len, self.alpha)
        return bool(self.done.all())

    def result(self) -> torch.Tensor:
        """(B, L) per source the best finished hypothesis (its best live one if none finished), EOS
        included, PAD after it; L is the longest of them, or the steps taken if one has no EOS."""
        steps = self.ys.size(1) - 1  # tokens decoded (BOS excluded)
        B = self.best.size(0)
        none = self.best == float("-inf")
        if none.any():
            # (B*K, steps + 1) -> (B, K, steps + 1) -> (B, steps): each source's best live one, BOS dropped
            live = self.ys.view(B, self.K, -1)[torch.arange(B, device=self.ys.device), self.scores.argmax(-1), 1:]
            self.best_out[none, : live.size(1)] = live[none]
        ends = self.best_out == self.eos  # (B, max_len)
        lengths = torch.where(ends.any(-1), ends.int().argmax(-1) + 1, steps)  # up to and including the first EOS
        return self.best_out[:, : int(lengths.max())]
