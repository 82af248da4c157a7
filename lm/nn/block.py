"""The transformer block shared by decoder, encoder and encoder-decoder, and its variants by name:
``attention`` (standard | differential) and ``norm_placement`` (pre | post)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from .attention import KVCache, MultiHeadAttention
from .differential import DifferentialAttention

ATTENTION = {"standard": MultiHeadAttention, "differential": DifferentialAttention}


def make_attention(name: str, embedding_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                   causal: bool = False, layer: int = 1, qk_norm: bool = False) -> nn.Module:
    """Build an attention module by name (``attention``); raises ValueError listing the valid names.

    layer: the block's depth, 1..L (differential attention's lambda_init depends on it)."""
    if name not in ATTENTION:
        raise ValueError(f"unknown attention {name!r}; choose one of: {', '.join(ATTENTION)}")
    if name == "standard":
        return MultiHeadAttention(embedding_dim, num_heads, dropout, bias, causal=causal, qk_norm=qk_norm)
    return DifferentialAttention(embedding_dim, num_heads, dropout, bias, causal=causal, layer=layer, qk_norm=qk_norm)


class ReLUSquared(nn.Module):
    """ReLU(x)^2 (So et al. 2021, "Primer"): a sparse activation that trains faster per step at small scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


ACTIVATIONS = {"gelu": nn.GELU, "relu2": ReLUSquared}
NORMS = ("layernorm", "rmsnorm")


def make_norm(name: str, embedding_dim: int, bias: bool = True) -> nn.Module:
    """A normalisation layer by name (``norm``): LayerNorm (with a bias when bias) or RMSNorm (none)."""
    if name not in NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of: {', '.join(NORMS)}")
    return nn.LayerNorm(embedding_dim, bias=bias) if name == "layernorm" else nn.RMSNorm(embedding_dim)


class FeedForward(nn.Module):
    """Position-wise MLP: FFN(x) = W_2 act(W_1 x + b_1) + b_2, hidden width 4C, act = GELU (default) or
    ReLU^2 (``activation``)."""

    def __init__(self, embedding_dim: int, bias: bool = True, activation: str = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of: {', '.join(ACTIVATIONS)}")
        self.fc = nn.Linear(embedding_dim, 4 * embedding_dim, bias=bias)
        self.act = ACTIVATIONS[activation]()
        self.proj = nn.Linear(4 * embedding_dim, embedding_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.act(self.fc(x)))  # dropout is the residual connection's


class LayerCache:
    """Per-block decoding cache: self-attention keys/values, and cross-attention ones if any."""

    def __init__(self, capacity: int = 0):
        self.self_attn = KVCache(capacity)  # capacity: the positions to allocate at once (block_size)
        self.cross_attn = KVCache()

    def reorder(self, index: torch.Tensor) -> None:
        self.self_attn.reorder(index)
        self.cross_attn.reorder(index)


def drop(dropout: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
    """dropout(x) in training; in eval, where dropout is the identity, x itself without the module call
    (several per block and token when decoding)."""
    return dropout(x) if dropout.training else x


class PreNorm(nn.Module):
    """Pre-LayerNorm residual connection (GPT-2): x + Dropout(Sublayer(LN(x))); LN is the ``norm`` by name."""

    def __init__(self, embedding_dim: int, bias: bool = True, dropout: float = 0.0, norm: str = "layernorm"):
        super().__init__()
        self.norm = make_norm(norm, embedding_dim, bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, sublayer: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return x + drop(self.dropout, sublayer(self.norm(x)))


class PostNorm(PreNorm):
    """Post-LayerNorm residual connection ("Attention Is All You Need"): LN(x + Dropout(Sublayer(x)))."""

    def forward(self, x, sublayer):
        return self.norm(x + drop(self.dropout, sublayer(x)))


RESIDUAL = {"pre": PreNorm, "post": PostNorm}


def make_residual(name: str, embedding_dim: int, bias: bool = True, dropout: float = 0.0,
                  norm: str = "layernorm") -> PreNorm:
    """A residual connection by name (``norm_placement``); raises ValueError listing the valid names."""
    if name not in RESIDUAL:
        raise ValueError(f"unknown norm_placement {name!r}; choose one of: {', '.join(RESIDUAL)}")
    return RESIDUAL[name](embedding_dim, bias, dropout, norm)


class Block(nn.Module):
    """Self-attention, optional cross-attention and a feed-forward network, each in a residual
    connection chosen by norm_placement:

        pre  (default):  x = x + SelfAttn(LN(x));  x = x + CrossAttn(LN(x), context);  x = x + FFN(LN(x))
        post (original): x = LN(x + SelfAttn(x));  x = LN(x + CrossAttn(x, context));  x = LN(x + FFN(x))

    Self-attention is causal in a decoder and bidirectional in an encoder; cross-attention (queries
    from x, keys and values from the encoder output) only with cross_attention=True. attention picks
    the attention module by name (standard | differential) for both.
    """

    def __init__(self, embedding_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 causal: bool = False, cross_attention: bool = False, attention: str = "standard",
                 norm_placement: str = "pre", layer: int = 1, norm: str = "layernorm", qk_norm: bool = False,
                 activation: str = "gelu"):
        super().__init__()

        def attn(is_causal: bool) -> nn.Module:
            return make_attention(attention, embedding_dim, num_heads, dropout, bias, causal=is_causal, layer=layer,
                                  qk_norm=qk_norm)

        def residual() -> PreNorm:
            return make_residual(norm_placement, embedding_dim, bias, dropout, norm)

        self.self_attn, self.res_self = attn(causal), residual()
        self.cross_attn = attn(False) if cross_attention else None
        self.res_cross = residual() if cross_attention else None
        self.ff, self.res_ff = FeedForward(embedding_dim, bias, activation), residual()

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                context_padding_mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                return_weights: bool = False, rope=None):
        """x: (B, T, C); context: (B, S, C) encoder output, needed when the block has cross-attention.

        padding_mask: (B, T_k) True at real tokens of x (and of the cached past);
        context_padding_mask: (B, S) the same for the context; attn_mask: (T, T_k) or (B, T, T_k)
        boolean adjacency for self-attention; rope: the Rotation of x's positions for self-attention
        (None without rotary positions). Returns (x, weights) with weights a dict of per-attention
        weights when return_weights, else None.
        """
        weights = {"self": None, "cross": None}

        def self_attention(h: torch.Tensor) -> torch.Tensor:
            h, weights["self"] = self.self_attn(h, key_padding_mask=padding_mask, attn_mask=attn_mask,
                                                cache=cache.self_attn if cache else None,
                                                return_weights=return_weights, rope=rope)
            return h

        def cross_attention(h: torch.Tensor) -> torch.Tensor:
            h, weights["cross"] = self.cross_attn(h, context, key_padding_mask=context_padding_mask,
                                                  cache=cache.cross_attn if cache else None,
                                                  return_weights=return_weights)
            return h

        x = self.res_self(x, self_attention)
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass the encoder output as context")
            x = self.res_cross(x, cross_attention)
        x = self.res_ff(x, self.ff)
        return x, (weights if return_weights else None)
