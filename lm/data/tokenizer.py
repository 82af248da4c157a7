"""Tokenizers: text <-> integer ids, with a state of plain values for checkpoints.

By name (data.tokenizer): char (CharTokenizer, here), bpe (lm.data.bpe.BpeTokenizer, trained on the training
split) and tiktoken's encodings (lm.data.bpe.TiktokenTokenizer). Every tokenizer has kind, vocab_size, dtype,
encode(text) -> ids, decode(ids) -> text, token_bytes(id), state() and from_state(state).
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class UnknownCharactersError(ValueError):
    """Text holds characters the vocabulary does not have."""


class CharTokenizer:
    """One token per Unicode character; the vocabulary is the sorted set of a corpus's characters."""

    kind = "char"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be unique")
        self.chars = "".join(sorted(chars))
        self._stoi = {c: i for i, c in enumerate(self.chars)}
        # code point -> id (-1: not in the vocabulary), up to the largest code point, for a vectorised encode
        codes = np.array([ord(c) for c in self.chars], dtype=np.int64)
        self._ids = np.full(int(codes.max()) + 1 if len(codes) else 1, -1, dtype=np.int32)
        self._ids[codes] = np.arange(len(codes))

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls("".join(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    @property
    def dtype(self) -> np.dtype:
        """Smallest unsigned dtype that holds every id."""
        return np.dtype(np.uint16) if self.vocab_size <= 65536 else np.dtype(np.uint32)

    def encode(self, text: str) -> np.ndarray:
        """Text -> ids (numpy array). Raises UnknownCharactersError listing unseen characters."""
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = self._ids[np.minimum(codes, len(self._ids) - 1)]
        bad = (ids < 0) | (codes >= len(self._ids))
        if bad.any():
            unknown = sorted(set(chr(c) for c in codes[bad]))
            raise UnknownCharactersError(
                f"{len(unknown)} character(s) not in the vocabulary: "
                + ", ".join(repr(c) for c in unknown[:20])
                + (" ..." if len(unknown) > 20 else "")
            )
        return ids.astype(self.dtype)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def token_bytes(self, i: int) -> bytes:
        """The UTF-8 bytes of token i (one character)."""
        return self.chars[int(i)].encode("utf-8")

    def state(self) -> dict:
        """Plain values only (a str), so checkpoints load with weights_only=True."""
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> "CharTokenizer":
        if state.get("kind") != cls.kind:
            raise ValueError(f"tokenizer kind {state.get('kind')!r} is not {cls.kind!r}")
        return cls(state["chars"])


def make_tokenizer(name: str, text: str | list[str], vocab_size: int = 0, file: str | None = None,
                   progress: Callable[[int, int], None] | None = None):
    """The tokenizer named by data.tokenizer, built from text (a str, or a list of pieces): char (its
    characters), bpe (vocab_size tokens learned from it; the caller passes the training split or a
    sample of it; progress(merges done, total) while learning) or a tiktoken encoding (gpt2,
    cl100k_base, ...: from tiktoken's cache or file; text is not needed)."""
    from ..config import TOKENIZERS

    if name == "char":
        return CharTokenizer.from_text(text if isinstance(text, str) else "".join(text))
    from . import bpe  # tiktoken loads only when a BPE tokenizer is used

    if name == "bpe":
        return bpe.BpeTokenizer.from_text(text, vocab_size, progress)
    if name in TOKENIZERS:
        return bpe.TiktokenTokenizer.from_name(name, file)
    raise ValueError(f"unknown tokenizer {name!r}; choose one of: {', '.join(TOKENIZERS)}")


def tokenizer_from_state(state: dict):
    """The tokenizer a checkpoint (or token cache) saved with state()."""
    kind = state.get("kind")
    if kind == "char":
        return CharTokenizer.from_state(state)
    from . import bpe

    if kind == "bpe":
        return bpe.BpeTokenizer.from_state(state)
    if kind == "tiktoken":
        return bpe.TiktokenTokenizer.from_state(state)
    raise ValueError(f"unknown tokenizer kind {kind!r} in the saved state (char, bpe or tiktoken)")
