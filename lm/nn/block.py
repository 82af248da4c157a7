"""The transformer block shared by decoder, encoder and encoder-decoder, and the parts it is made of,
each chosen by name from a registry: ``attention`` (ATTENTION), ``norm`` (NORMS), ``activation``
(ACTIVATIONS); ``norm_placement`` (pre | post) is written out in Block.forward."""

from __future__ import annotations

import torch
import torch.nn as nn

from ..config import ModelConfig
from .attention import KVCache, MultiHeadAttention
from .differential import DifferentialAttention

# name -> class(cfg, causal, layer); the names are ModelConfig.attention's Literal (a test ties them)
ATTENTION = {"standard": MultiHeadAttention, "differential": DifferentialAttention}


def registered(registry: dict, key: str, name: str):
    """registry[name], or a ValueError listing the valid names."""
    if name not in registry:
        raise ValueError(f"unknown {key} {name!r}; choose one of: {', '.join(registry)}")
    return registry[name]


def make_attention(cfg: ModelConfig, causal: bool = False, layer: int = 1) -> MultiHeadAttention:
    """The attention module named by cfg.attention. causal: a decoder's self-attention; layer: the
    block's depth, 1..L (differential attention's lambda_init depends on it)."""
    return registered(ATTENTION, "attention", cfg.attention)(cfg, causal, layer)


class ReLUSquared(nn.Module):
    """ReLU(x)^2 (So et al. 2021, "Primer"): a sparse activation that trains faster per step at small scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x).square()


ACTIVATIONS = {"gelu": nn.GELU, "relu2": ReLUSquared}  # name -> class(); ModelConfig.activation's names


def _layer_norm(dim: int, bias: bool) -> nn.Module:
    """LN(x) = g (x - mean(x)) / sqrt(var(x) + eps) + b (b only with bias)."""
    return nn.LayerNorm(dim, bias=bias)


def _rms_norm(dim: int, bias: bool) -> nn.Module:
    """RMSNorm(x) = g x / sqrt(mean(x^2) + eps): no centring, no bias whatever bias says."""
    return nn.RMSNorm(dim)


NORMS = {"layernorm": _layer_norm, "rmsnorm": _rms_norm}  # name -> fn(dim, bias); ModelConfig.norm's names
# where a block's norms sit (see Block); ModelConfig.norm_placement's names. No classes: Block.forward has both
NORM_PLACEMENTS = {"pre": "x + Sublayer(LN(x))", "post": "LN(x + Sublayer(x))"}


def make_norm(cfg: ModelConfig) -> nn.Module:
    """The normalisation layer named by cfg.norm, over the embedding width."""
    return registered(NORMS, "norm", cfg.norm)(cfg.embedding_dim, cfg.bias)


class FeedForward(nn.Module):
    """Position-wise MLP: FFN(x) = W_2 act(W_1 x + b_1) + b_2, hidden width 4C, act = GELU (default) or
    ReLU^2 (``activation``)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        C = cfg.embedding_dim
        self.fc = nn.Linear(C, 4 * C, bias=cfg.bias)
        self.act = registered(ACTIVATIONS, "activation", cfg.activation)()
        self.proj = nn.Linear(4 * C, C, bias=cfg.bias)

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


# parameter names of checkpoints written before the norms became the block's own (commit d241b62 and earlier)
RENAMED = {"res_self.norm.": "norm_self.", "res_cross.norm.": "norm_cross.", "res_ff.norm.": "norm_ff."}


def current_name(key: str) -> str:
    """A parameter name of an older checkpoint as this code names it (each RENAMED part replaced)."""
    for old, new in RENAMED.items():
        key = key.replace(old, new)
    return key


class Block(nn.Module):
    """Self-attention, optional cross-attention and a feed-forward network, each in a residual
    connection with its norm placed by cfg.norm_placement:

        pre  (GPT-2):    x = x + SelfAttn(LN(x));  x = x + CrossAttn(LN(x), context);  x = x + FFN(LN(x))
        post (original): x = LN(x + SelfAttn(x));  x = LN(x + CrossAttn(x, context));  x = LN(x + FFN(x))

    with dropout on each sublayer's output before the add. Self-attention is causal in a decoder and
    bidirectional in an encoder; cross-attention (queries from x, keys and values from the encoder
    output) only with cross_attention=True. layer: the block's depth, 1..L.
    """

    def __init__(self, cfg: ModelConfig, causal: bool = False, cross_attention: bool = False, layer: int = 1):
        super().__init__()
        registered(NORM_PLACEMENTS, "norm_placement", cfg.norm_placement)
        self.post_norm = cfg.norm_placement == "post"
        self.self_attn, self.norm_self = make_attention(cfg, causal, layer), make_norm(cfg)
        self.cross_attn = make_attention(cfg, False, layer) if cross_attention else None
        self.norm_cross = make_norm(cfg) if cross_attention else None
        self.ff, self.norm_ff = FeedForward(cfg), make_norm(cfg)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
                padding_mask: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
                context_padding_mask: torch.Tensor | None = None, cache: LayerCache | None = None,
                return_weights: bool = False, rope=None, cross_rope=None):
        """x: (B, T, C); context: (B, S, C) encoder output, needed when the block has cross-attention.

        padding_mask: (B, T_k) True at real tokens of x (and of the cached past);
        context_padding_mask: (B, S) the same for the context; attn_mask: (T, T_k) or (B, T, T_k)
        boolean adjacency for self-attention; rope: the Rotation of x's positions for self-attention
        (None without rotary positions); cross_rope: the CrossRotation of cross-attention (None: none).
        Returns (x, self_weights, cross_weights), the weights
        (B, heads, T, T_k) when return_weights, else None.
        """
        post = self.post_norm
        # self-attention: pre-norm normalises the sublayer's input, post-norm the residual sum
        h, self_weights = self.self_attn(x if post else self.norm_self(x), key_padding_mask=padding_mask,
                                         attn_mask=attn_mask, cache=cache.self_attn if cache else None,
                                         return_weights=return_weights, rope=rope)
        x = x + drop(self.dropout, h)
        x = self.norm_self(x) if post else x
        # cross-attention: queries from x, keys and values from the context (decoder blocks only)
        cross_weights = None
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this block has cross-attention: pass the encoder output as context")
            h, cross_weights = self.cross_attn(x if post else self.norm_cross(x), context,
                                               key_padding_mask=context_padding_mask,
                                               cache=cache.cross_attn if cache else None,
                                               return_weights=return_weights, cross_rope=cross_rope)
            x = x + drop(self.dropout, h)
            x = self.norm_cross(x) if post else x
        # feed-forward
        x = x + drop(self.dropout, self.ff(x if post else self.norm_ff(x)))
        x = self.norm_ff(x) if post else x
        return x, self_weights, cross_weights

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Reads the parameter names of older checkpoints too (current_name), so they still load."""
        for key in [k for k in state_dict if k.startswith(prefix)]:
            name = prefix + current_name(key[len(prefix):])
            if name != key:
                state_dict[name] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
