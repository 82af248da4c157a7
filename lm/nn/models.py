"""Models as thin stacks of the shared Block."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig
from .block import Block, LayerCache
from .position import make_positional


def init_weights(model: nn.Module, num_blocks: int) -> None:
    """GPT-2 initialisation: N(0, 0.02) for weights, zero biases, and the projections that
    write into the residual stream scaled by 1/sqrt(2 * num_blocks)."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            std = 0.02 / math.sqrt(2 * num_blocks) if name.endswith(("out_proj.weight", "ff.proj.weight")) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)


class GPT(nn.Module):
    """Decoder-only language model:

        h_0 = E[tokens] + PE[positions];  h_l = Block_l(h_{l-1}) (causal);  logits = LN(h_L) E^T
    with the output head tied to the token embedding E.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (> 0) before building a model")
        self.cfg = cfg
        C = cfg.embedding_dim
        self.tok_emb = nn.Embedding(cfg.vocab_size, C)
        self.pos_emb = make_positional(cfg.pos_encoding, cfg.block_size, C)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            Block(C, cfg.num_heads, cfg.dropout, cfg.bias, causal=True) for _ in range(cfg.num_blocks)
        )
        self.ln_f = nn.LayerNorm(C, bias=cfg.bias)
        self.head = nn.Linear(C, cfg.vocab_size, bias=False)
        self.head.weight = self.tok_emb.weight  # weight tying
        init_weights(self, cfg.num_blocks)

    def new_cache(self) -> list[LayerCache]:
        """An empty key/value cache, one entry per block, for incremental decoding."""
        return [LayerCache() for _ in self.blocks]

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *,
                cache: list[LayerCache] | None = None, last_only: bool = False,
                return_weights: bool = False):
        """idx: (B, T) token ids. With a cache, idx holds only the new tokens and positions
        continue after the cached ones.

        Returns (logits, loss, weights): logits (B, T, V) or (B, 1, V) with last_only; loss is the
        mean cross-entropy against targets (B, T) or None; weights is a list (one per block) of
        (B, nh, T, T_k) attention weights when return_weights, else None.
        """
        B, T = idx.shape
        start = len(cache[0].self_attn) if cache else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.cfg.block_size}")
        x = self.tok_emb(idx)  # (B, T, C)
        pe = self.pos_emb(start, T)
        if pe is not None:
            x = x + pe  # (T, C) broadcast over the batch
        x = self.drop(x)
        weights = [] if return_weights else None
        for i, block in enumerate(self.blocks):
            x, w = block(x, cache=cache[i] if cache else None, return_weights=return_weights)
            if return_weights:
                weights.append(w["self"])
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        logits = self.head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))
        return logits, loss, weights

    def num_params(self) -> int:
        """Trainable parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Estimated training FLOPs per token (forward + backward, Kaplan et al. 2020):
        6 N + 6 L T C, with N the parameters outside the embeddings, L blocks, T = block_size, C width."""
        c = self.cfg
        n = self.num_params() - self.tok_emb.weight.numel()
        n -= sum(p.numel() for p in self.pos_emb.parameters())
        return 6 * n + 6 * c.num_blocks * c.block_size * c.embedding_dim
