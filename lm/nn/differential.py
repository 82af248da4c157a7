"""Differential attention (Ye et al. 2024, "Differential Transformer", arXiv 2410.05258).

Each differential head subtracts two softmax attention maps, cancelling the attention noise that
both share:

    [Q1; Q2] = x W_q,  [K1; K2] = c W_k,  V = c W_v        (c = x, or the context)
    A_i    = softmax(Q1 K1^T / sqrt(d)) - lambda softmax(Q2 K2^T / sqrt(d))
    head_i = (1 - lambda_init) RMSNorm(A_i V_i)
    lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init
    lambda_init = 0.8 - 0.6 exp(-0.3 (layer - 1)),  layer = 1..L
    DiffAttn = Concat(head_1..head_h) W_o

With num_heads standard heads of width d = C / num_heads there are h = num_heads / 2 differential
heads: Q and K keep num_heads heads of width d (head 2i = Q1/K1 of head i, head 2i+1 = Q2/K2, as in
the reference implementation) and V has h heads of width 2d, so the parameters are those of
MultiHeadAttention plus the four lambda vectors (4d) and the RMSNorm weight (2d).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache, MultiHeadAttention, sdpa


class DifferentialAttention(MultiHeadAttention):
    """Drop-in replacement of MultiHeadAttention (same constructor, forward and return values).

    A query with no allowed key (a fully masked row) gets all-zero weights and a zero head output,
    so its result is out_proj(0) = the output bias, in the SDPA and the explicit path alike.
    return_weights gives the signed differential maps A (B, h, T, T_k); a row sums to 1 - lambda.
    With dropout in training, the fused path drops the two softmax maps independently and the
    explicit path drops A itself: the same in expectation, not the same distribution.
    """

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 causal: bool = False, layer: int = 1, qk_norm: bool = False):
        if num_heads % 2:
            raise ValueError(f"attention 'differential' needs an even num_heads (two softmax maps per head), "
                             f"got num_heads {num_heads}")
        # the projections of standard attention; num_heads Q/K heads of width d, num_heads / 2 differential heads
        super().__init__(embedding_dim, num_heads, dropout, bias, causal, qk_norm)
        self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))
        d = self.head_dim
        self.lambda_q1 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_k1 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_q2 = nn.Parameter(torch.randn(d) * 0.1)
        self.lambda_k2 = nn.Parameter(torch.randn(d) * 0.1)
        self.subln = nn.RMSNorm(2 * d, eps=1e-5)  # per head over its 2d features, weight shared by heads

    def _value_heads(self, v: torch.Tensor) -> torch.Tensor:
        B, S, C = v.shape
        return v.view(B, S, self.num_heads // 2, 2 * self.head_dim).transpose(1, 2)  # (B, h, S, 2d)

    def lambda_full(self) -> torch.Tensor:
        """lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init (a scalar)."""
        return (torch.exp(torch.dot(self.lambda_q1, self.lambda_k1))
                - torch.exp(torch.dot(self.lambda_q2, self.lambda_k2)) + self.lambda_init)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                key_padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, return_weights: bool = False, rope=None):
        """x: (B, T, C) queries' inputs; context: (B, S, C) for cross-attention (None = self-attention).
        rope: None or a callable rotating (B, heads, T, d) queries and keys (self-attention only).

        Returns (y, weights): y is (B, T, C); weights is (B, h, T, T_k) when return_weights, else None.
        """
        B, T, C = x.shape
        hs, h = self.head_dim, self.num_heads // 2
        # q, k: (B, 2h, T or T_k, d), Q1/Q2 (K1/K2) interleaved; v: (B, h, T_k, 2d)
        q, k, v, mask, causal = self._attention_inputs(x, context, key_padding_mask, attn_mask, cache, rope)
        t_k = k.size(2)
        lam = self.lambda_full().to(q.dtype)
        p = self.dropout if self.training else 0.0
        q1, q2 = q[:, 0::2], q[:, 1::2]  # 2 x (B, h, T, d)
        k1, k2 = k[:, 0::2], k[:, 1::2]  # 2 x (B, h, T_k, d)
        if self.use_sdpa and not return_weights:
            if causal and T == t_k and key_padding_mask is None and attn_mask is None:
                # plain causal square: let SDPA pick its fused causal kernel instead of reading a mask
                y1 = sdpa(q1, k1, v, None, True, p, self.float32_on_cpu)  # (B, h, T, 2d)
                y2 = sdpa(q2, k2, v, None, True, p, self.float32_on_cpu)  # (B, h, T, 2d)
            else:
                y1 = sdpa(q1, k1, v, mask, False, p, self.float32_on_cpu)  # (B, h, T, 2d)
                y2 = sdpa(q2, k2, v, mask, False, p, self.float32_on_cpu)  # (B, h, T, 2d)
            y = y1 - lam * y2  # (B, h, T, 2d)
            if mask is not None:
                # a row with no allowed key: SDPA may give NaN there; the explicit path gives 0
                y = y.masked_fill(~mask.any(-1, keepdim=True), 0.0)
            weights = None
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(hs)  # (B, 2h, T, T_k)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            a = F.softmax(scores, dim=-1).view(B, h, 2, T, t_k)  # (B, h, 2, T, T_k); NaN on a row with no key
            weights = a[:, :, 0] - lam * a[:, :, 1]  # (B, h, T, T_k): signed differential map
            if mask is not None:
                weights = weights.masked_fill(~mask, 0.0)  # masked keys get exactly 0, fully masked rows too
            y = self.attn_dropout(weights) @ v  # (B, h, T, 2d)
        y = self.subln(y) * (1 - self.lambda_init)  # (B, h, T, 2d); RMSNorm(0) = 0 keeps masked rows zero
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): heads side by side
        return self.out_proj(y), (weights if return_weights else None)
