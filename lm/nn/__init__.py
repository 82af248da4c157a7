"""The models and their parts: attention, positions, the shared Block, the models, the loss."""

from .attention import KVCache, MultiHeadAttention, build_mask
from .block import Block, FeedForward, LayerCache
from .loss import token_loss
from .models import GPT, AttentionMaps, Encoder, EncoderDecoder, NodeClassifier, make_model
from .position import make_positional

__all__ = ["KVCache", "MultiHeadAttention", "build_mask", "Block", "FeedForward", "LayerCache", "AttentionMaps",
           "GPT", "Encoder", "EncoderDecoder", "NodeClassifier", "make_model", "make_positional", "token_loss"]
