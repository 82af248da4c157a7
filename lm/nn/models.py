"""Models as thin stacks of the shared Block: GPT (decoder only), Encoder, EncoderDecoder, NodeClassifier."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn

from ..config import Config, ModelConfig
from ..data.graphs import GraphTask
from .block import NORM_PLACEMENTS, Block, LayerCache, registered, drop, make_norm
from .position import CrossRotation, make_positional


@dataclass
class AttentionMaps:
    """The attention weights of one forward pass, one convention for every model: each kind of
    attention is a list with one (B, heads, T_q, T_k) tensor per layer (block), or None when the
    model has no attention of that kind. (A model not asked for weights returns None instead.)

        encoder_self  queries and keys: source positions, bidirectional   (Encoder, EncoderDecoder)
        decoder_self  queries and keys: target positions, causal           (GPT, EncoderDecoder)
        cross         queries: target positions, keys: source positions    (EncoderDecoder)

    heads is num_heads, or num_heads / 2 with differential attention, whose maps are signed (a row
    sums to 1 - lambda). Masked keys (future, padding) have weight exactly 0.
    """

    encoder_self: list[torch.Tensor] | None = None
    decoder_self: list[torch.Tensor] | None = None
    cross: list[torch.Tensor] | None = None

    def kinds(self) -> dict[str, list[torch.Tensor]]:
        """The kinds this model has, by name, in the order encoder_self, decoder_self, cross."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


RESIDUAL_PROJECTIONS = ("out_proj.weight", "ff.proj.weight")  # the layers that write into the residual stream


def init_weights(model: nn.Module, num_blocks: int, zero_init: bool = False) -> None:
    """GPT-2 initialisation: N(0, 0.02) for weights, zero biases, and the projections that
    write into the residual stream scaled by 1/sqrt(2 * num_blocks).

    zero_init: those projections, and an untied output head ("head.weight" not shared with the
    embedding), start at exactly zero instead: every block starts as the identity and the first
    logits are uniform (as in the modded-nanoGPT speedrun records)."""
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            nn.init.zeros_(p)
        elif p.dim() >= 2:
            if zero_init and name.endswith((*RESIDUAL_PROJECTIONS, "head.weight")):
                nn.init.zeros_(p)
                continue
            std = 0.02 / math.sqrt(2 * num_blocks) if name.endswith(RESIDUAL_PROJECTIONS) else 0.02
            nn.init.normal_(p, mean=0.0, std=std)


class Embedder(nn.Module):
    """Token embedding plus positional encoding, then dropout:

        h_0 = Dropout(s E[tokens] + PE[positions])

    with s = 1, or sqrt(C) for the sinusoidal encodings (as in "Attention Is All You Need"). A
    rotary encoding adds nothing here: forward also returns the Rotation that self-attention
    applies to queries and keys (None for the others).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("ModelConfig.vocab_size must be set (> 0) before building a model")
        self.block_size = cfg.block_size
        self.tok = nn.Embedding(cfg.vocab_size, cfg.embedding_dim)
        self.pos = make_positional(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: torch.Tensor, start: int = 0, pos: torch.Tensor | None = None):
        """idx: (B, T) token ids; start: position of the first one (with a cache), used when pos is None;
        pos: explicit positions (see lm.nn.position) for these T tokens. Returns (h_0 (B, T, C), rope)."""
        B, T = idx.shape
        if start + T > self.block_size:
            raise ValueError(f"sequence of {start + T} tokens is longer than block_size {self.block_size}")
        if pos is None:
            pe, rope = self.pos.encode_consecutive(start, T, idx.device)
        else:
            self.pos.check(pos, T)
            pe, rope = self.pos(pos), self.pos.rotation(pos)
        x = self.tok(idx)  # (B, T, C)
        if self.pos.token_scale != 1.0:
            x = x * self.pos.token_scale
        if pe is not None:
            x = x + pe  # (T, C) or (B, T, C)
        return drop(self.drop, x), rope


def _stack(cfg: ModelConfig, causal: bool, cross_attention: bool) -> nn.ModuleList:
    """num_blocks Blocks, numbered 1..L (layer: differential attention's lambda_init depends on the depth).
    share_blocks: one Block (layer 1) in every place, so the stack applies it num_blocks times."""
    if cfg.share_blocks:
        return nn.ModuleList([Block(cfg, causal, cross_attention, 1)] * cfg.num_blocks)
    return nn.ModuleList(Block(cfg, causal, cross_attention, layer) for layer in range(1, cfg.num_blocks + 1))


def _final_norm(cfg: ModelConfig) -> nn.Module:
    """The norm after the last block with pre-norm blocks; with post-norm the last block's output
    is already normalised, so nothing."""
    registered(NORM_PLACEMENTS, "norm_placement", cfg.norm_placement)
    return make_norm(cfg) if cfg.norm_placement == "pre" else nn.Identity()


def _head(cfg: ModelConfig, embed: nn.Embedding) -> nn.Linear:
    """The output head: tied to the token embedding (tie_head, logits = h E^T), or a matrix of its own."""
    head = nn.Linear(cfg.embedding_dim, cfg.vocab_size, bias=False)
    if cfg.tie_head:
        head.weight = embed.weight  # weight tying
    return head


class GPT(nn.Module):
    """Decoder-only language model:

        h_0 = s E[tokens] + PE[positions];  h_l = Block_l(h_{l-1}) (causal);  logits = LN(h_L) W_head^T
    with s = 1, or sqrt(C) for the sinusoidal encodings (see Embedder), and W_head = E (the head tied
    to the token embedding) unless tie_head is false.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedder(cfg)
        self.blocks = _stack(cfg, causal=True, cross_attention=False)
        self.ln_f = _final_norm(cfg)
        self.head = _head(cfg, self.embed.tok)
        init_weights(self, cfg.num_blocks, cfg.zero_init)

    def new_cache(self) -> list[LayerCache]:
        """An empty key/value cache, one entry per block, for incremental decoding."""
        return [LayerCache(self.cfg.block_size) for _ in self.blocks]

    def forward(self, idx: torch.Tensor, *, cache: list[LayerCache] | None = None, last_only: bool = False,
                return_weights: bool = False, pos: torch.Tensor | None = None):
        """idx: (B, T) token ids. With a cache, idx holds only the new tokens and positions
        continue after the cached ones. pos: explicit positions of these tokens (default
        consecutive; see lm.nn.position).

        Returns (logits, attentions): logits (B, T, V) or (B, 1, V) with last_only; attentions is an
        AttentionMaps with decoder_self when return_weights (the explicit attention path, slower), else
        None. The loss is the job's (lm.jobs, with lm.nn.loss.token_loss).
        """
        start = len(cache[0].self_attn) if cache else 0
        x, rope = self.embed(idx, start, pos)  # (B, T, C)
        maps = AttentionMaps(decoder_self=[]) if return_weights else None
        for i, block in enumerate(self.blocks):
            x, self_weights, _ = block(x, cache=cache[i] if cache else None, return_weights=return_weights, rope=rope)
            if maps is not None:
                maps.decoder_self.append(self_weights)
        x = self.ln_f(x)
        if last_only:
            x = x[:, -1:]  # (B, 1, C)
        return self.head(x), maps  # (B, T, V)

    def num_params(self) -> int:
        """Trainable parameters (the tied head counted once)."""
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """Estimated training FLOPs per token (forward + backward, Kaplan et al. 2020):

            6 N + 6 L T C + 6 C V

        with N the parameters outside the embeddings, L blocks, T = block_size, C width, V vocab_size.
        6 C V is the output head (a C x V matmul per token), counted although its weights are the
        tied embedding's: the lookup E[tokens] costs nothing, the head's matmul does."""
        c = self.cfg
        untied = 0 if c.tie_head else self.head.weight.numel()  # counted in 6 C V below
        n = self.num_params() - sum(p.numel() for p in self.embed.parameters()) - untied
        return 6 * n + 6 * c.num_blocks * c.block_size * c.embedding_dim + 6 * c.embedding_dim * c.vocab_size


class Encoder(nn.Module):
    """Bidirectional stack: every position attends to every real (non-padding) position.

    Returns per-position states (B, S, C), e.g. for a classifier or tagger head, or as the
    memory of an EncoderDecoder.
    """

    def __init__(self, cfg: ModelConfig, embed: Embedder | None = None):
        super().__init__()
        self.cfg = cfg
        self.embed = embed or Embedder(cfg)
        self.blocks = _stack(cfg, causal=False, cross_attention=False)
        self.ln_f = _final_norm(cfg)
        if embed is None:
            init_weights(self, cfg.num_blocks, cfg.zero_init)

    def forward(self, src: torch.Tensor, padding_mask: torch.Tensor | None = None, *,
                attn_mask: torch.Tensor | None = None, return_weights: bool = False,
                pos: torch.Tensor | None = None):
        """src: (B, S) ids; padding_mask: (B, S) True at real tokens; attn_mask: (S, S) or (B, S, S)
        boolean adjacency; pos: the tokens' positions (default 0..S-1; see lm.nn.position).
        Returns (states (B, S, C), attentions): an AttentionMaps with encoder_self when return_weights,
        else None."""
        x, rope = self.embed(src, 0, pos)
        maps = AttentionMaps(encoder_self=[]) if return_weights else None
        for block in self.blocks:
            x, self_weights, _ = block(x, padding_mask=padding_mask, attn_mask=attn_mask,
                                       return_weights=return_weights, rope=rope)
            if maps is not None:
                maps.encoder_self.append(self_weights)
        return self.ln_f(x), maps


class EncoderDecoder(nn.Module):
    """The transformer of "Attention Is All You Need": an Encoder over the source and a decoder of
    causal self-attention + cross-attention blocks over the target, logits = LN(h) E_tgt^T.

    share_embeddings: source and target use one embedding table (one vocabulary).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        src_embed = Embedder(cfg)
        self.tgt_embed = src_embed if cfg.share_embeddings else Embedder(cfg)
        self.encoder = Encoder(cfg, src_embed)
        self.blocks = _stack(cfg, causal=True, cross_attention=True)
        self.ln_f = _final_norm(cfg)
        self.head = _head(cfg, self.tgt_embed.tok)  # tied to the target embedding unless tie_head is false
        init_weights(self, cfg.num_blocks, cfg.zero_init)

    def new_cache(self) -> list[LayerCache]:
        """Per decoder block: self-attention keys/values, and the source's cross-attention keys/values."""
        return [LayerCache(self.cfg.block_size) for _ in self.blocks]

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None,
               pos: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) source ids -> (B, S, C) memory. pos: the source's positions (default 0..S-1)."""
        return self.encoder(src, src_mask, pos=pos)[0]

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None = None,
               tgt_mask: torch.Tensor | None = None, *, cache: list[LayerCache] | None = None,
               return_weights: bool = False, pos: torch.Tensor | None = None):
        """tgt: (B, T) target ids so far (only the new ones with a cache); pos: their positions (default
        consecutive, continuing after the cached ones). Returns (logits (B, T, V), attentions): an
        AttentionMaps with decoder_self and cross when return_weights, else None."""
        start = len(cache[0].self_attn) if cache else 0
        x, rope = self.tgt_embed(tgt, start, pos)
        T, S = tgt.size(1), memory.size(1)
        cross_rope = (CrossRotation(self.cfg.embedding_dim // self.cfg.num_heads,
                                    torch.arange(start, start + T, device=tgt.device),
                                    torch.arange(S, device=tgt.device)) if self.cfg.cross_rope else None)
        maps = AttentionMaps(decoder_self=[], cross=[]) if return_weights else None
        for i, block in enumerate(self.blocks):
            x, self_weights, cross_weights = block(x, memory, padding_mask=tgt_mask, context_padding_mask=src_mask,
                                                   cache=cache[i] if cache else None,
                                                   return_weights=return_weights, rope=rope, cross_rope=cross_rope)
            if maps is not None:
                maps.decoder_self.append(self_weights)
                maps.cross.append(cross_weights)
        return self.head(self.ln_f(x)), maps

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, src_mask: torch.Tensor | None = None,
                tgt_mask: torch.Tensor | None = None, *, src_pos: torch.Tensor | None = None,
                tgt_pos: torch.Tensor | None = None, return_weights: bool = False):
        """Teacher forcing: tgt (B, T) is the decoder input (BOS + target); src_mask, tgt_mask: (B, S),
        (B, T) True at real tokens. src_pos, tgt_pos: positions of source and decoder input (default
        consecutive from 0).

        Returns (logits (B, T, V), attentions), as GPT does: attentions is an AttentionMaps with all three
        kinds (encoder_self, decoder_self, cross) when return_weights, else None. The loss against the
        expected output (target + EOS) is the job's (lm.jobs.Seq2SeqJob.loss).
        """
        memory, enc_maps = self.encoder(src, src_mask, pos=src_pos, return_weights=return_weights)  # (B, S, C)
        logits, maps = self.decode(tgt, memory, src_mask, tgt_mask, pos=tgt_pos, return_weights=return_weights)
        if maps is not None:
            maps.encoder_self = enc_maps.encoder_self
        return logits, maps

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """6 N + 6 L T C + 6 C V as for GPT, with N the non-embedding parameters of both stacks, L counting
        self- and cross-attention layers, and 6 C V the output head (an estimate per target token with a
        source of block_size)."""
        c = self.cfg
        embeds = {id(p): p for m in (self.encoder.embed, self.tgt_embed) for p in m.parameters()}
        untied = 0 if c.tie_head else self.head.weight.numel()  # counted in 6 C V below
        n = self.num_params() - sum(p.numel() for p in embeds.values()) - untied
        return (6 * n + 6 * 3 * c.num_blocks * c.block_size * c.embedding_dim
                + 6 * c.embedding_dim * c.vocab_size)


class NodeClassifier(nn.Module):
    """An Encoder whose attention mask is a graph, and a linear head that labels every node (task graph):

        h_L = Encoder(tokens; mask = A + I);   logits_i = h_L,i W^T   (one answer per node i)

    Self-attention is message passing along the mask: in each block node i gathers
    sum_j softmax_j(q_i k_j / sqrt(d)) v_j over j in {i} and its neighbours only, so after L blocks a
    node's state depends on the nodes at most L hops away and on nothing else (no positions: node
    numbers are arbitrary).
    """

    def __init__(self, cfg: ModelConfig, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg, Embedder(cfg))  # given an Embedder, it leaves initialisation to us
        self.head = nn.Linear(cfg.embedding_dim, num_classes, bias=False)
        init_weights(self, cfg.num_blocks, cfg.zero_init)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, *, return_weights: bool = False):
        """tokens: (B, N) node tokens; mask: (B, N, N) bool, True where node i may attend to node j (the
        adjacency plus self-loops, lm.data.graphs.GraphBatch.mask). Returns (logits (B, N, classes),
        attentions): an AttentionMaps with encoder_self when return_weights, else None."""
        states, maps = self.encoder(tokens, attn_mask=mask, return_weights=return_weights)  # (B, N, C)
        return self.head(states), maps

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> int:
        """6 N + 6 L T C per node, as for GPT, with N the non-embedding parameters (the head's C x classes
        among them) and T = block_size: an estimate, the attention computed densely under the mask."""
        c = self.cfg
        n = self.num_params() - sum(p.numel() for p in self.encoder.embed.parameters())
        return 6 * n + 6 * c.num_blocks * c.block_size * c.embedding_dim


def make_model(cfg: Config) -> nn.Module:
    """The model a config describes: GPT for task lm, NodeClassifier for task graph, EncoderDecoder for the
    seq2seq tasks."""
    if cfg.data.task == "lm":
        return GPT(cfg.model)
    if cfg.data.task == "graph":
        return NodeClassifier(cfg.model, GraphTask.from_config(cfg).num_classes)
    return EncoderDecoder(cfg.model)
