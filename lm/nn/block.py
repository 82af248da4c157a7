"""The transformer block shared by decoder, encoder and encoder-decoder."""

from __future__ import annotations

import torch
import torch.nn as nn

from .attention import KVCache, MultiHeadAttention


class FeedForward(nn.Module):
    """Position-wise MLP: FFN(x) = W_2 GELU(W_1 x + b_1) + b_2, hidden width 4C."""

    def __init__(self, embedding_dim: int, dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(embedding_dim, 4 * embedding_dim, bias=bias)
        self.act = nn.GELU()
        self.proj = nn.Linear(4 * embedding_dim, embedding_dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(self.act(self.fc(x))))


class LayerCache:
    """Per-block decoding cache: self-attention keys/values, and cross-attention ones if any."""

    def __init__(self):
        self.self_attn = KVCache()
        self.cross_attn = KVCache()

    def reorder(self, index: torch.Tensor) -> None:
        self.self_attn.reorder(index)
        self.cross_attn.reorder(index)


class Block(nn.Module):
    """Pre-LayerNorm residual block:

        x = x + SelfAttn(LN(x))              (causal in a decoder, bidirectional in an encoder)
        x = x + CrossAttn(LN(x), context)    (only with cross_attention=True)
        x = x + FFN(LN(x))
    """

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 causal: bool = False, cross_attention: bool = False):
        super().__init__()
        self.ln_self = nn.LayerNorm(embedding_dim, bias=bias)
        self.self_attn = MultiHeadAttention(embedding_dim, num_heads, dropout, bias, causal=causal)
        self.ln_cross = nn.LayerNorm(embedding_dim, bias=bias) if cross_attention else None
        self.cross_attn = MultiHeadAttention(embedding_dim, num_heads, dropout, bias) if cross_attention else None
        self.ln_ff = nn.LayerNorm(embedding_dim, bias=bias)
        self.ff = FeedForward(embedding_dim, dropout, bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                context_padding_mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                return_weights: bool = False):
        """x: (B, T, C); context: (B, S, C) encoder output, needed when the block has cross-attention.

        padding_mask: (B, T_k) True at real tokens of x (and of the cached past);
        context_padding_mask: (B, S) the same for the context; attn_mask: (T, T_k) or (B, T, T_k)
        boolean adjacency for self-attention. Returns (x, weights) with weights a dict of
        per-attention weights when return_weights, else None.
        """
        h, w_self = self.self_attn(self.ln_self(x), key_padding_mask=padding_mask, attn_mask=attn_mask,
                                   cache=cache.self_attn if cache else None, return_weights=return_weights)
        x = x + self.resid_dropout(h)
        w_cross = None
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass the encoder output as context")
            h, w_cross = self.cross_attn(self.ln_cross(x), context, key_padding_mask=context_padding_mask,
                                         cache=cache.cross_attn if cache else None, return_weights=return_weights)
            x = x + self.resid_dropout(h)
        x = x + self.ff(self.ln_ff(x))
        weights = {"self": w_self, "cross": w_cross} if return_weights else None
        return x, weights
