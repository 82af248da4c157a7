"""Neural-network building blocks: attention, positions, the shared Block, and the models."""

from .attention import KVCache, MultiHeadAttention, build_mask
from .block import Block, FeedForward, LayerCache
from .models import GPT, AttentionMaps, Encoder, EncoderDecoder
from .position import make_positional

__all__ = ["KVCache", "MultiHeadAttention", "build_mask", "Block", "FeedForward", "LayerCache", "AttentionMaps",
           "GPT", "Encoder", "EncoderDecoder", "make_positional"]
