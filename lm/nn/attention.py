"""Multi-head scaled dot-product attention with masks and a key/value cache.

One module serves every use: causal self-attention (decoder), bidirectional
self-attention (encoder) and cross-attention (queries from the decoder, keys and
values from the encoder output).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig


class KVCache:
    """Keys and values of the positions already seen by one attention layer.

    Self-attention appends the new positions' keys and values at every call;
    cross-attention computes them from the encoder output once and reuses them.

    The first append allocates buffers for ``capacity`` positions (the model's block_size), and later
    ones write into them in place: no reallocation or copy of the past per token. k and v are views
    of the filled part. A cache that outgrows its capacity doubles it.
    """

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self._k: torch.Tensor | None = None  # (B, nh, capacity, hs)
        self._v: torch.Tensor | None = None  # (B, nh, capacity, hs); differential: (B, h, capacity, 2 hs)
        self.length = 0

    @property
    def k(self) -> torch.Tensor | None:
        return None if self._k is None else self._k[:, :, : self.length]  # (B, nh, T_past, hs)

    @property
    def v(self) -> torch.Tensor | None:
        return None if self._v is None else self._v[:, :, : self.length]

    def __len__(self) -> int:
        return self.length

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows ``index`` (in that order): beam search follows its surviving beams."""
        if self._k is not None:
            self._k, self._v = self._k.index_select(0, index), self._v.index_select(0, index)

    def _grow(self, k: torch.Tensor, v: torch.Tensor, needed: int) -> None:
        size = max(self.capacity, needed, 2 * (0 if self._k is None else self._k.size(2)))
        new_k = k.new_empty(k.size(0), k.size(1), size, k.size(3))
        new_v = v.new_empty(v.size(0), v.size(1), size, v.size(3))
        if self.length:
            new_k[:, :, : self.length] = self.k
            new_v[:, :, : self.length] = self.v
        self._k, self._v = new_k, new_v

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write these T positions' k and v after the past ones; returns all of them (views)."""
        end = self.length + k.size(2)
        if self._k is None or end > self._k.size(2):
            self._grow(k, v, end)
        self._k[:, :, self.length : end] = k
        self._v[:, :, self.length : end] = v
        self.length = end
        return self.k, self.v


def build_mask(t_q: int, t_k: int, *, causal: bool, key_padding_mask: torch.Tensor | None = None,
               attn_mask: torch.Tensor | None = None, device=None) -> torch.Tensor | None:
    """Boolean mask, True where a query may attend to a key; broadcastable to (B, nh, T_q, T_k).

    causal: query i (the last of the T_q newest positions) sees keys up to its own position,
            i.e. key j is allowed when j <= i + (t_k - t_q), which also holds with a cache.
    key_padding_mask: (B, T_k), True at real tokens, False at padding.
    attn_mask: (T_q, T_k) or (B, T_q, T_k), True where attention is allowed (an adjacency matrix).
    Returns None when nothing is masked.
    """
    mask = None
    if causal and t_q > 1:  # one query (the newest position, decoding with a cache) may see every key
        mask = torch.ones(t_q, t_k, dtype=torch.bool, device=device).tril(diagonal=t_k - t_q)  # (T_q, T_k)
    if attn_mask is not None:
        if attn_mask.dtype != torch.bool:
            raise TypeError(f"attn_mask must be a bool tensor, got {attn_mask.dtype}")
        am = attn_mask if attn_mask.dim() == 2 else attn_mask[:, None]  # (T_q, T_k) or (B, 1, T_q, T_k)
        mask = am if mask is None else mask & am
    if key_padding_mask is not None:
        kp = key_padding_mask.bool()[:, None, None, :]  # (B, 1, 1, T_k)
        mask = kp if mask is None else mask & kp
    return mask


FLOAT32_CORE_BELOW = 256 * 64  # T_k x head size under which sdpa computes a bf16 autocast core in float32


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, causal: bool,
         dropout_p: float, float32_on_cpu: bool = True) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v by F.scaled_dot_product_attention; q: (B, h, T, d), k and v:
    (B, h, T_k, d) -> (B, h, T, d). causal: the plain causal square (mask is then None).

    float32_on_cpu: under bfloat16 autocast on the CPU, compute this core in float32 and hand back
    bfloat16 when the keys are short and the heads small (T_k x d below FLOAT32_CORE_BELOW). PyTorch's
    CPU flash-attention backward in bfloat16 carries a cost per block that only long keys and wide heads
    amortise: forward and backward took 2.7x float32's time at T 64, d 32, 1.35x at T 128, d 64, and
    0.94x at T 256, d 64 (bench/attention_core.py, docs/benchmarks.md). The projections around the core
    stay in bfloat16.
    """
    if (float32_on_cpu and q.device.type == "cpu" and q.dtype == torch.bfloat16
            and torch.is_autocast_enabled("cpu") and k.size(-2) * q.size(-1) < FLOAT32_CORE_BELOW):
        with torch.autocast("cpu", enabled=False):
            y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, is_causal=causal,
                                               dropout_p=dropout_p)  # (B, h, T, d) float32
        return y.to(q.dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p)


class MultiHeadAttention(nn.Module):
    """softmax(Q K^T / sqrt(d_head) + mask) V, computed for num_heads heads in parallel.

    Q = x W_q, K = c W_k, V = c W_v with c = x (self-attention) or c = context (cross-attention);
    the heads' outputs are concatenated and projected: MultiHead = Concat(head_1..head_h) W_o.
    forward makes the projections and the mask; _attend is the attention itself, the one method a
    variant (DifferentialAttention) overrides, with _value_heads (how the values are grouped).

    A query with no allowed key (a fully masked row) gets all-zero attention weights and a zero
    head output, so its result is out_proj(0) = the output bias; the SDPA and the explicit path
    agree on this (softmax over no keys would otherwise be 0/0 = NaN).

    causal: a decoder's self-attention. layer: the block's depth, unused here (every attention of the
    registry, lm.nn.block.ATTENTION, takes the same arguments; DifferentialAttention needs it).
    """

    def __init__(self, cfg: ModelConfig, causal: bool = False, layer: int = 1):
        super().__init__()
        C = cfg.embedding_dim
        assert C % cfg.num_heads == 0, "lm.config.validate checks embedding_dim % num_heads"
        self.num_heads = cfg.num_heads
        self.head_dim = C // cfg.num_heads
        self.causal = causal
        self.dropout = cfg.dropout
        self.q_proj = nn.Linear(C, C, bias=cfg.bias)
        self.kv_proj = nn.Linear(C, 2 * C, bias=cfg.bias)
        self.out_proj = nn.Linear(C, C, bias=cfg.bias)
        self.attn_dropout = nn.Dropout(cfg.dropout)
        # QK-norm: q <- RMSNorm(q), k <- RMSNorm(k) per head (width hs), bounding the attention logits
        self.q_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(self.head_dim) if cfg.qk_norm else nn.Identity()
        # False: always use the explicit matmul-softmax path (slower; same numbers up to rounding)
        self.use_sdpa = True
        # the SDPA core in float32 under bfloat16 autocast on the CPU for short keys (see sdpa); False: never
        self.float32_on_cpu = True

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, T, C = t.shape
        return t.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)

    def _value_heads(self, v: torch.Tensor) -> torch.Tensor:
        return self._heads(v)  # (B, nh, S, hs)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, return_weights: bool = False, rope=None, cross_rope=None):
        """x: (B, T, C) queries' inputs; context: (B, S, C) for cross-attention (None = self-attention).

        Keys and values come from the cache (cross-attention after its first call) or are projected from
        x (self-attention) or the context. rope: a Rotation (lm.nn.position) of these T positions, or None;
        self-attention rotates its queries and this call's keys with it, before caching them;
        cross-attention never does. cross_rope: a CrossRotation, or None; cross-attention rotates its
        queries by their target positions and the source's keys by theirs (once, before caching).
        key_padding_mask, attn_mask: see build_mask.

        Returns (y, weights): y is (B, T, C); weights is (B, heads, T, T_k) when return_weights, else None.
        """
        B, T, C = x.shape
        q = self.q_norm(self._heads(self.q_proj(x)))  # (B, nh, T, hs)
        if context is not None and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v  # cross-attention: the source's keys/values were computed once
        else:
            k, v = self.kv_proj(x if context is None else context).split(C, dim=2)  # 2 x (B, S, C)
            k, v = self.k_norm(self._heads(k)), self._value_heads(v)  # (B, nh, S, hs); v as the variant groups it
            if rope is not None and context is None:
                q, k = rope(q), rope(k)  # RoPE: <R(m) q, R(n) k> depends on m - n only
            elif cross_rope is not None and context is not None:
                k = cross_rope.key(k)  # the source's keys by their positions, stored rotated
            if cache is not None:
                k, v = cache.append(k, v)  # self-attention: past + new positions; cross: stored once
        if cross_rope is not None and context is not None:
            q = cross_rope.query(q)  # <R(t) q, R(s) k> depends on t - s
        causal = self.causal and context is None
        mask = build_mask(T, k.size(2), causal=causal, key_padding_mask=key_padding_mask, attn_mask=attn_mask,
                          device=x.device)  # (T, T_k), (B, 1, 1, T_k), (B, 1, T, T_k) or None
        # the plain causal square: SDPA may use its fused causal kernel instead of reading the mask
        square = causal and T == k.size(2) and key_padding_mask is None and attn_mask is None
        y, weights = self._attend(q, k, v, mask, square, return_weights)  # (B, heads, T, head width)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.out_proj(y), (weights if return_weights else None)

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                causal: bool, return_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Attention(Q, K, V) = softmax(Q K^T / sqrt(hs) + M) V, M = 0 where mask is True, -inf elsewhere.

        q: (B, nh, T, hs), k and v: (B, nh, T_k, hs) -> (y (B, nh, T, hs), weights (B, nh, T, T_k) or None).
        causal: mask is the plain causal square, which the fused kernel applies itself. The fused kernel
        (sdpa) unless weights are asked for or use_sdpa is False; then the explicit matmul-softmax path.
        """
        p = self.dropout if self.training else 0.0
        if self.use_sdpa and not return_weights:
            return sdpa(q, k, v, None if causal else mask, causal, p, self.float32_on_cpu), None
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, nh, T, T_k)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = F.softmax(scores, dim=-1)  # (B, nh, T, T_k); NaN on a row with no allowed key
        if mask is not None:
            weights = weights.masked_fill(~mask, 0.0)  # masked keys get exactly 0, fully masked rows too
        return self.attn_dropout(weights) @ v, weights  # (B, nh, T, hs)
