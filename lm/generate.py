"""Autoregressive sampling from a decoder: temperature, top-k, top-p, with a key/value cache."""

from __future__ import annotations

from typing import Iterator

import torch


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


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Choose the next token from last-position logits (B, V); returns (B, 1). temperature 0 = greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.no_grad()
def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, generator: torch.Generator | None = None,
             use_cache: bool = True) -> Iterator[torch.Tensor]:
    """Yield max_new_tokens new tokens (each (B, 1)) continuing idx (B, T), one at a time.

    The model always sees at most its last block_size tokens, at positions 0..block_size-1.
    With use_cache, each step feeds only the newest token while the context fits in
    block_size. Once it no longer fits, the window slides and every position shifts, so
    (with absolute positional encodings) the window is recomputed in full each step; the
    tokens are the same as with use_cache=False.
    """
    check_sampling(temperature, top_k, top_p, max_new_tokens)
    if idx.size(1) == 0:
        raise ValueError("the prompt is empty: give at least one token")
    model.eval()
    block_size = model.cfg.block_size
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and idx.size(1) <= block_size:
            if cache is None:
                cache = model.new_cache()
                logits, _, _ = model(idx, cache=cache, last_only=True)  # prefill the prompt
            else:
                logits, _, _ = model(idx[:, -1:], cache=cache, last_only=True)  # (B, 1, V)
        else:
            logits, _, _ = model(idx[:, -block_size:], last_only=True)  # (B, 1, V)
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
        yield nxt
