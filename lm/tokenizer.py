"""Tokenizers: text <-> integer ids, with a state of plain values for checkpoints."""

from __future__ import annotations

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
        # code points in sorted order, for a vectorised encode
        self._codes = np.array([ord(c) for c in self.chars], dtype=np.int64)

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
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.searchsorted(self._codes, codes)
        ids = np.minimum(ids, len(self._codes) - 1)
        bad = self._codes[ids] != codes
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

    def state(self) -> dict:
        """Plain values only (a str), so checkpoints load with weights_only=True."""
        return {"kind": self.kind, "chars": self.chars}

    @classmethod
    def from_state(cls, state: dict) -> "CharTokenizer":
        if state.get("kind") != cls.kind:
            raise ValueError(f"tokenizer kind {state.get('kind')!r} is not {cls.kind!r}")
        return cls(state["chars"])
