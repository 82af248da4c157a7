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

from ..config import ModelConfig
from .attention import MultiHeadAttention, sdpa


class DifferentialAttention(MultiHeadAttention):
    """Drop-in replacement of MultiHeadAttention (same constructor, forward and return values): only the
    attention step (_attend) and the grouping of the values (_value_heads) differ.

    A query with no allowed key (a fully masked row) gets all-zero weights and a zero head output,
    so its result is out_proj(0) = the output bias, in the SDPA and the explicit path alike.
    return_weights gives the signed differential maps A (B, h, T, T_k); a row sums to 1 - lambda.
    With dropout in training, the fused path drops the two softmax maps independently and the
    explicit path drops A itself: the same in expectation, not the same distribution.
    """

    def __init__(self, cfg: ModelConfig, causal: bool = False, layer: int = 1):
        assert cfg.num_heads % 2 == 0, "lm.config.validate checks that differential attention has an even num_heads"
        # the projections of standard attention; num_heads Q/K heads of width d, num_heads / 2 differential heads
        super().__init__(cfg, causal, layer)
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

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                causal: bool, return_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """head_i = (1 - lambda_init) RMSNorm(A_i V_i),
        A_i = softmax(Q1 K1^T / sqrt(d)) - lambda softmax(Q2 K2^T / sqrt(d)).

        q, k: (B, 2h, T or T_k, d), Q1/Q2 (K1/K2) interleaved; v: (B, h, T_k, 2d) (see _value_heads).
        Returns (y (B, h, T, 2d), weights (B, h, T, T_k) or None); causal and the two paths as in
        MultiHeadAttention._attend.
        """
        B, _, T, _ = q.shape
        h, t_k = self.num_heads // 2, k.size(2)
        lam = self.lambda_full().to(q.dtype)
        p = self.dropout if self.training else 0.0
        if self.use_sdpa and not return_weights:
            fused_mask = None if causal else mask
            y1 = sdpa(q[:, 0::2], k[:, 0::2], v, fused_mask, causal, p, self.float32_on_cpu)  # (B, h, T, 2d)
            y2 = sdpa(q[:, 1::2], k[:, 1::2], v, fused_mask, causal, p, self.float32_on_cpu)  # (B, h, T, 2d)
            y = y1 - lam * y2  # (B, h, T, 2d)
            if mask is not None:
                # a row with no allowed key: SDPA may give NaN there; the explicit path gives 0
                y = y.masked_fill(~mask.any(-1, keepdim=True), 0.0)
            weights = None
        else:
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim)  # (B, 2h, T, T_k)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            a = F.softmax(scores, dim=-1).view(B, h, 2, T, t_k)  # (B, h, 2, T, T_k); NaN on a row with no key
            weights = a[:, :, 0] - lam * a[:, :, 1]  # (B, h, T, T_k): signed differential map
            if mask is not None:
                weights = weights.masked_fill(~mask, 0.0)  # masked keys get exactly 0, fully masked rows too
            y = self.attn_dropout(weights) @ v  # (B, h, T, 2d)
        return self.subln(y) * (1 - self.lambda_init), weights  # RMSNorm(0) = 0 keeps masked rows zero
