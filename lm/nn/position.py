"""Positional encodings, chosen by name: learned | sinusoidal | none.

Each module maps a range of positions to vectors (T, C) that are added to the token
embeddings; ``start`` is the position of the first token (non-zero when decoding
with a cache).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class LearnedPositional(nn.Module):
    """A trained vector per position, as in GPT: PE[pos] = W_pos[pos]."""

    def __init__(self, block_size: int, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(block_size, embedding_dim))
        nn.init.normal_(self.weight, mean=0.0, std=0.02)

    def forward(self, start: int, length: int) -> torch.Tensor:
        return self.weight[start : start + length]  # (T, C)


class SinusoidalPositional(nn.Module):
    """Fixed encodings of "Attention Is All You Need" (section 3.5):

    PE[pos, 2i] = sin(pos / 10000^(2i/C)),  PE[pos, 2i+1] = cos(pos / 10000^(2i/C)).
    """

    def __init__(self, block_size: int, embedding_dim: int):
        super().__init__()
        pos = torch.arange(block_size, dtype=torch.float32)[:, None]  # (T, 1)
        inv_freq = torch.exp(torch.arange(0, embedding_dim, 2, dtype=torch.float32)
                             * (-math.log(10000.0) / embedding_dim))  # (ceil(C/2),)
        pe = torch.zeros(block_size, embedding_dim)
        pe[:, 0::2] = torch.sin(pos * inv_freq)
        pe[:, 1::2] = torch.cos(pos * inv_freq[: embedding_dim // 2])
        self.register_buffer("pe", pe, persistent=False)  # rebuilt from the config, not stored

    def forward(self, start: int, length: int) -> torch.Tensor:
        return self.pe[start : start + length]  # (T, C)


class NoPositional(nn.Module):
    """No positional information (a causal decoder can still infer order from its mask)."""

    def forward(self, start: int, length: int) -> torch.Tensor | None:
        return None


POSITIONAL = {"learned": LearnedPositional, "sinusoidal": SinusoidalPositional, "none": NoPositional}


def make_positional(name: str, block_size: int, embedding_dim: int) -> nn.Module:
    """Build a positional encoding by name; raises ValueError listing the valid names."""
    if name not in POSITIONAL:
        raise ValueError(f"unknown pos_encoding {name!r}; choose one of: {', '.join(POSITIONAL)}")
    cls = POSITIONAL[name]
    return cls() if cls is NoPositional else cls(block_size, embedding_dim)
