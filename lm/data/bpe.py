"""Byte-level BPE tokenizers: trained here (``BpeTokenizer``) or OpenAI's pre-built ones
(``TiktokenTokenizer``). Both encode and decode with ``tiktoken`` (fast, Rust) and keep the
tokenizer interface of ``lm.data.tokenizer.CharTokenizer``: ``kind``, ``vocab_size``, ``dtype``,
``encode``, ``decode``, ``state`` (plain values only, so checkpoints load with
``torch.load(weights_only=True)`` and need no file or network later) and ``from_state``.

Every text round-trips exactly: all 256 byte values are tokens, so characters never seen in
training are encoded as their UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import os
import tempfile
import types
from collections import Counter, defaultdict
from typing import Callable, Iterable

import numpy as np
import regex
import tiktoken

# GPT-2's pre-tokenisation (tiktoken's r50k/gpt2 pattern): text is split into pieces (a word with
# its leading space, a number, a run of punctuation, whitespace) and merges never cross pieces.
# Written for both the ``regex`` package (training) and tiktoken's Rust regex (encoding).
PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""

_PROGRESS_EVERY = 16  # merges between progress() calls


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _dtype_for(vocab_size: int) -> np.dtype:
    """Smallest unsigned dtype that holds every id (as CharTokenizer)."""
    return np.dtype(np.uint16) if vocab_size <= 65536 else np.dtype(np.uint32)


# ---------------------------------------------------------------------------------------------
# training


def train_bpe(text: str | Iterable[str], vocab_size: int,
              progress: Callable[[int, int], None] | None = None) -> list[tuple[int, int]]:
    """Learn byte-level BPE merges from ``text`` (a str, or pieces of text split apart) until there
    are ``vocab_size`` tokens.

    Returns ``merges``: merge ``i`` makes token ``256 + i`` from the pair ``(left_id, right_id)``.
    Each step merges the most frequent adjacent pair (ties: the smallest pair, so the result is
    deterministic); fewer merges come back when no pair is left. A pair whose bytes already are
    a token (the same string reached by another split) is skipped and never merged, so token
    byte strings stay unique, as tiktoken's ranks need. ``progress(done, total)`` is called
    every few merges.

    Pair counts are updated incrementally (``_PairIndex``): only the distinct pieces holding the
    merged pair are rewritten, and the best pair comes from a heap with lazy deletion.
    """
    if not _is_int(vocab_size) or vocab_size < 256:
        raise ValueError(f"vocab_size must be an integer >= 256 (the 256 byte values plus the "
                         f"merges), got {vocab_size!r}")
    total = int(vocab_size) - 256
    if progress is not None:
        progress(0, total)

    pairs = _PairIndex(*_distinct_pieces(text))
    vocab = [bytes([b]) for b in range(256)]  # token id -> bytes
    known = set(vocab)
    merges: list[tuple[int, int]] = []
    while len(merges) < total:
        pair = pairs.pop_most_frequent()
        if pair is None:
            break  # no pair is left to merge
        joined = vocab[pair[0]] + vocab[pair[1]]
        if joined in known:
            pairs.skip(pair)  # its bytes already are a token: never merge it
            continue
        vocab.append(joined)
        known.add(joined)
        merges.append(pair)
        pairs.merge(pair, len(vocab) - 1)
        if progress is not None and len(merges) % _PROGRESS_EVERY == 0:
            progress(len(merges), total)
    if progress is not None and len(merges) % _PROGRESS_EVERY != 0:
        progress(len(merges), total)
    return merges


def _distinct_pieces(text: str | Iterable[str]) -> tuple[list[list[int]], list[int]]:
    """Split ``text`` into pre-tokenised pieces (``PATTERN``) and count them: returns the distinct
    pieces as lists of byte values, and how often each occurs. Merges never cross pieces, so
    training only needs each distinct piece once. Single bytes are left out: they hold no pair."""
    pieces: Counter[str] = Counter()
    for part in [text] if isinstance(text, str) else text:
        pieces.update(regex.findall(PATTERN, part))
    words: list[list[int]] = []
    freqs: list[int] = []
    for piece, freq in pieces.items():
        ids = list(piece.encode("utf-8"))
        if len(ids) > 1:
            words.append(ids)
            freqs.append(freq)
    return words, freqs


def _merge_word(word: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """``word`` with every occurrence of ``pair`` replaced by ``new_id``, scanning left to right
    (so in ``a a a`` the pair ``(a, a)`` is merged once, at the start)."""
    a, b = pair
    new = []
    j, n = 0, len(word)
    while j < n:
        if word[j] == a and j + 1 < n and word[j + 1] == b:
            new.append(new_id)
            j += 2
        else:
            new.append(word[j])
            j += 1
    return new


class _PairIndex:
    """The adjacent pairs of the distinct pieces (``words``, each occurring ``freqs[i]`` times),
    kept up to date as pairs are merged, so each merge only touches the pieces that hold it.

    ``counts``: pair -> occurrences in the text; ``where``: pair -> indices of the words holding
    it; ``heap``: (-count, pair) entries, the most frequent (then smallest) pair first. An entry
    goes stale when its pair's count changes (a fresh one is pushed) and is dropped when popped.
    ``skipped``: pairs never to merge (``train_bpe`` found their bytes already are a token).
    """

    def __init__(self, words: list[list[int]], freqs: list[int]):
        self.words, self.freqs = words, freqs
        self.counts: dict[tuple[int, int], int] = defaultdict(int)
        self.where: dict[tuple[int, int], set[int]] = defaultdict(set)
        for i, (w, f) in enumerate(zip(words, freqs)):
            for pair in zip(w, w[1:]):
                self.counts[pair] += f
                self.where[pair].add(i)
        self.heap = [(-c, pair) for pair, c in self.counts.items()]
        heapq.heapify(self.heap)
        self.skipped: set[tuple[int, int]] = set()

    def pop_most_frequent(self) -> tuple[int, int] | None:
        """Remove and return the most frequent pair not skipped (ties: the smallest), skipping
        stale heap entries; None when no pair is left."""
        while self.heap:
            neg, pair = heapq.heappop(self.heap)
            if self.counts.get(pair, 0) == -neg and pair not in self.skipped:
                return pair
        return None

    def skip(self, pair: tuple[int, int]) -> None:
        """Never return ``pair`` again (its heap entries are dropped when popped)."""
        self.skipped.add(pair)

    def merge(self, pair: tuple[int, int], new_id: int) -> None:
        """Replace every occurrence of ``pair`` by the token ``new_id``, and update the counts of
        the pairs that changed around them (and their heap entries)."""
        changed: list[tuple[int, int]] = []
        for i in self.where.pop(pair):
            changed += self._rewrite(i, _merge_word(self.words[i], pair, new_id), pair)
        self.counts.pop(pair, None)  # no occurrence is left (merging left to right removes them all)
        self._requeue(set(changed), pair)

    def _rewrite(self, i: int, new: list[int], merged: tuple[int, int]) -> list[tuple[int, int]]:
        """Replace word ``i`` by ``new`` (the same word with ``merged`` merged): each pair's count
        changes by the difference of its occurrences in the two, times the word's frequency.
        Returns the pairs whose count changed."""
        old, f = self.words[i], self.freqs[i]
        old_pairs = Counter(zip(old, old[1:]))
        new_pairs = Counter(zip(new, new[1:]))
        changed = []
        for p, k in old_pairs.items():
            d = new_pairs.get(p, 0) - k
            if d:
                self.counts[p] += d * f
                changed.append(p)
            if p not in new_pairs and p != merged:
                self.where[p].discard(i)
        for p, k in new_pairs.items():
            if p not in old_pairs:
                self.counts[p] += k * f
                self.where[p].add(i)
                changed.append(p)
        self.words[i] = new
        return changed

    def _requeue(self, changed: set[tuple[int, int]], merged: tuple[int, int]) -> None:
        """Push a fresh heap entry for each changed pair still occurring (and not skipped); forget
        the pairs no longer occurring (``merged`` itself was removed from ``where`` already)."""
        for p in changed:
            c = self.counts.get(p, 0)
            if c > 0:
                if p not in self.skipped:
                    heapq.heappush(self.heap, (-c, p))
            elif p != merged:
                self.counts.pop(p, None)
                self.where.pop(p, None)


# ---------------------------------------------------------------------------------------------
# tokenizers


class _TiktokenBacked:
    """Encode/decode through a ``tiktoken.Encoding`` held in ``self._enc``."""

    _enc: tiktoken.Encoding

    @property
    def vocab_size(self) -> int:
        """Ids run from 0 to vocab_size - 1 (special tokens included)."""
        return self._enc.n_vocab

    @property
    def dtype(self) -> np.dtype:
        return _dtype_for(self.vocab_size)

    def encode(self, text: str) -> np.ndarray:
        """Text -> ids (1-D numpy array of ``dtype``); special tokens are never produced."""
        return np.array(self._enc.encode_ordinary(text), dtype=self.dtype)

    def decode(self, ids) -> str:
        """Ids (list, numpy array, tensor) -> text; invalid UTF-8 (a cut-off character) becomes U+FFFD."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        if isinstance(ids, int):  # a 0-d array
            ids = [ids]
        try:
            data = self._enc.decode_bytes(ids)
        except (KeyError, OverflowError, TypeError) as e:
            bad = [i for i in ids if not (_is_int(i) and 0 <= i < self.vocab_size)]
            raise ValueError(f"cannot decode ids {bad[:10] or ids[:10]} (vocab_size "
                             f"{self.vocab_size}): {e}") from None
        return data.decode("utf-8", errors="replace")

    def token_bytes(self, i: int) -> bytes:
        """The bytes of token ``i``; empty for an id below vocab_size that names no token (tiktoken's
        encodings leave a few gaps, e.g. cl100k_base 100261-100275, which a model may still sample)."""
        if not (_is_int(i) and 0 <= i < self.vocab_size):
            raise ValueError(f"no token {i!r} (vocab_size {self.vocab_size})")
        try:
            return self._enc.decode_single_token_bytes(int(i))
        except KeyError:
            return b""


def _check_merges(merges) -> list[tuple[int, int]]:
    """Merges as a list of int pairs, each referring only to earlier tokens; ValueError otherwise."""
    if not isinstance(merges, (list, tuple)):
        raise ValueError(f"BPE merges must be a list of [left_id, right_id] pairs, got "
                         f"{type(merges).__name__}")
    out = []
    for i, m in enumerate(merges):
        if not isinstance(m, (list, tuple)) or len(m) != 2 or not all(_is_int(x) for x in m):
            raise ValueError(f"BPE merge {i} must be a pair of ints, got {m!r}")
        a, b = int(m[0]), int(m[1])
        if not (0 <= a < 256 + i and 0 <= b < 256 + i):
            raise ValueError(f"BPE merge {i} ({a}, {b}) refers to a token that does not exist yet "
                             f"(ids must be in [0, {256 + i}))")
        out.append((a, b))
    return out


class BpeTokenizer(_TiktokenBacked):
    """Byte-level BPE trained on the corpus (``train_bpe``); encoding runs in tiktoken.

    Token ids: 0-255 are the bytes, ``256 + i`` is ``merges[i]``. tiktoken ranks tokens by
    their bytes, so merge order = rank order gives the usual BPE encoding.
    """

    kind = "bpe"

    def __init__(self, merges, pattern: str = PATTERN):
        self.merges = _check_merges(merges)
        if not isinstance(pattern, str):
            raise ValueError(f"BPE pattern must be a str, got {type(pattern).__name__}")
        self.pattern = pattern
        vocab = [bytes([b]) for b in range(256)]
        ranks = {t: i for i, t in enumerate(vocab)}
        for i, (a, b) in enumerate(self.merges):
            t = vocab[a] + vocab[b]
            if t in ranks:  # train_bpe never does this; tiktoken would lose one of the ids
                raise ValueError(f"BPE merge {i} ({a}, {b}) makes {t!r}, which is already token "
                                 f"{ranks[t]} (token bytes must be unique)")
            ranks[t] = len(vocab)
            vocab.append(t)
        self._vocab = vocab
        digest = hashlib.sha256(json.dumps([pattern, self.merges]).encode()).hexdigest()[:16]
        try:
            self._enc = tiktoken.Encoding(f"bpe-{len(vocab)}-{digest}", pat_str=pattern,
                                          mergeable_ranks=ranks, special_tokens={})
        except ValueError as e:  # the pattern does not compile in tiktoken's regex engine
            raise ValueError(f"BPE pattern {pattern!r} is not usable: {e}") from None

    @classmethod
    def from_text(cls, text: str | Iterable[str], vocab_size: int,
                  progress: Callable[[int, int], None] | None = None) -> "BpeTokenizer":
        """Train on ``text`` (see ``train_bpe``)."""
        return cls(train_bpe(text, vocab_size, progress))

    def token_bytes(self, i: int) -> bytes:
        if not (_is_int(i) and 0 <= i < len(self._vocab)):
            raise ValueError(f"no token {i!r} (vocab_size {len(self._vocab)})")
        return self._vocab[int(i)]

    def state(self) -> dict:
        """Plain values only: {"kind": "bpe", "merges": [[a, b], ...], "pattern": str}."""
        return {"kind": self.kind, "merges": [[a, b] for a, b in self.merges], "pattern": self.pattern}

    @classmethod
    def from_state(cls, state: dict) -> "BpeTokenizer":
        if not isinstance(state, dict) or state.get("kind") != cls.kind:
            kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"tokenizer kind {kind!r} is not {cls.kind!r}")
        if "merges" not in state:
            raise ValueError("BPE tokenizer state has no 'merges'")
        return cls(state["merges"], state.get("pattern", PATTERN))


# ---------------------------------------------------------------------------------------------
# OpenAI's pre-built encodings


def _encoding_specs() -> dict[str, dict]:
    """name -> {"pat_str", "special_tokens", "urls", ...} for tiktoken's OpenAI encodings.

    The constructors in ``tiktoken_ext.openai_public`` download their ranks when called, so they
    are run as copies whose rank loaders only record the URLs (the module itself is untouched).
    """
    from tiktoken_ext import openai_public as op

    specs: dict[str, dict] = {}
    g = dict(vars(op))

    def load_tiktoken_bpe(url, expected_hash=None):
        g["_urls"].append(url)
        return {}

    def data_gym_to_mergeable_bpe_ranks(vocab_bpe_file, encoder_json_file, *args, **kwargs):
        g["_urls"].extend([vocab_bpe_file, encoder_json_file])
        return {}

    g["load_tiktoken_bpe"] = load_tiktoken_bpe
    g["data_gym_to_mergeable_bpe_ranks"] = data_gym_to_mergeable_bpe_ranks
    for key, value in vars(op).items():  # module functions call each other through g
        if isinstance(value, types.FunctionType) and value.__module__ == op.__name__:
            g[key] = types.FunctionType(value.__code__, g, value.__name__, value.__defaults__,
                                        value.__closure__)
    for name, ctor in op.ENCODING_CONSTRUCTORS.items():
        g["_urls"] = []
        try:
            spec = g[ctor.__name__]() if g.get(ctor.__name__) is not ctor else None
        except Exception:  # noqa: BLE001 - a changed tiktoken: this encoding is just not offered
            spec = None
        if isinstance(spec, dict) and isinstance(spec.get("pat_str"), str):
            spec = {k: v for k, v in spec.items() if k != "mergeable_ranks"}
            spec["urls"] = list(dict.fromkeys(g["_urls"]))
            specs[name] = spec
    return specs


_SPECS: dict[str, dict] | None = None


def _spec(name: str) -> dict:
    global _SPECS
    if _SPECS is None:
        _SPECS = _encoding_specs()
    if name not in _SPECS:
        raise ValueError(f"unknown tiktoken encoding {name!r}; known: {', '.join(sorted(_SPECS))}")
    return _SPECS[name]


def _cache_dir() -> str:
    """Where tiktoken looks for downloaded files (its own rule, tiktoken.load.read_file_cached)."""
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        return os.environ["TIKTOKEN_CACHE_DIR"]
    if "DATA_GYM_CACHE_DIR" in os.environ:
        return os.environ["DATA_GYM_CACHE_DIR"]
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _unavailable_message(name: str, spec: dict, error: Exception) -> str:
    urls = spec["urls"]
    cached = "; ".join(f"{u} as file {hashlib.sha1(u.encode()).hexdigest()}" for u in urls)
    tiktoken_file = next((u for u in urls if u.endswith(".tiktoken")), None)
    if tiktoken_file is None and "r50k_base" in (_SPECS or {}):
        # gpt2 is published as vocab.bpe + encoder.json; r50k_base.tiktoken holds the same ranks
        tiktoken_file = next((u for u in _SPECS["r50k_base"]["urls"] if u.endswith(".tiktoken")), None)
        if tiktoken_file:
            tiktoken_file += f" (the same ranks as {name})"
    reason = f"{type(error).__name__}: {error}"
    if len(reason) > 200:
        reason = reason[:200] + " ..."
    return (
        f"tiktoken encoding {name!r} could not be loaded from tiktoken's cache "
        f"({_cache_dir()!r}) or downloaded ({reason}). To use it offline, either set "
        f"TIKTOKEN_CACHE_DIR to a directory holding tiktoken's cached download (a copy of "
        f"{cached}; tiktoken names each file by the SHA-1 of its URL), "
        f"or give the path of the encoding's .tiktoken file"
        + (f", fetched elsewhere from {tiktoken_file}" if tiktoken_file else "")
        + "."
    )


def _ranks_list(by_rank: dict[int, bytes], where: str) -> list[bytes]:
    """rank -> token  ->  tokens indexed by rank, b"" where no token has that rank (p50k_base
    leaves 50256 to its special token)."""
    top = max(by_rank, default=-1)
    if top >= 2 * len(by_rank) + 1024:  # a few gaps are fine; a huge sparse list is not
        raise ValueError(f"{where}: ranks are too sparse ({len(by_rank)} tokens, largest rank {top})")
    ranks = [b""] * (top + 1)
    for r, t in by_rank.items():
        ranks[r] = t
    return ranks


def _read_tiktoken_file(path) -> list[bytes]:
    """A ``.tiktoken`` file (lines: base64 token, space, rank) -> tokens indexed by rank.

    Read directly rather than with ``tiktoken.load.load_tiktoken_bpe``: that caches local files
    under their path, so an edited file at the same path would be shadowed by the stale copy.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"cannot read tiktoken ranks file {str(path)!r}: {e}") from None
    by_rank: dict[int, bytes] = {}
    for n, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            token, rank = base64.b64decode(token, validate=True), int(rank)
        except ValueError:
            raise ValueError(f"{str(path)!r} line {n} is not '<base64 token> <rank>': "
                             f"{line[:80]!r}") from None
        if rank < 0 or not token:
            raise ValueError(f"{str(path)!r} line {n}: negative rank or empty token")
        if rank in by_rank:
            raise ValueError(f"{str(path)!r} line {n}: rank {rank} appears twice")
        by_rank[rank] = token
    return _ranks_list(by_rank, repr(str(path)))


class TiktokenTokenizer(_TiktokenBacked):
    """One of OpenAI's pre-built encodings (gpt2, r50k_base, p50k_base, cl100k_base, o200k_base).

    The state holds the whole vocabulary, so a checkpoint needs neither the file nor the network.
    """

    kind = "tiktoken"

    def __init__(self, name: str, pattern: str, special_tokens: dict, ranks: list,
                 _encoding: tiktoken.Encoding | None = None):
        """``ranks[i]``: the bytes of token ``i``, or b"" for an id with no mergeable token."""
        if not isinstance(name, str) or not isinstance(pattern, str):
            raise ValueError("tiktoken tokenizer name and pattern must be str")
        if not isinstance(special_tokens, dict) or not all(
                isinstance(k, str) and _is_int(v) for k, v in special_tokens.items()):
            raise ValueError("tiktoken special_tokens must be a dict of str -> int")
        if not isinstance(ranks, (list, tuple)) or not all(isinstance(t, bytes) for t in ranks):
            raise ValueError("tiktoken ranks must be a list of token byte strings")
        mergeable = {t: i for i, t in enumerate(ranks) if t}
        if len(mergeable) != sum(1 for t in ranks if t):
            dup = next(t for t, n in Counter(t for t in ranks if t).items() if n > 1)
            raise ValueError(f"tiktoken ranks hold token {dup!r} more than once")
        missing = [b for b in range(256) if bytes([b]) not in mergeable]
        if missing:
            raise ValueError(f"tiktoken ranks lack {len(missing)} single-byte token(s) (e.g. "
                             f"{bytes([missing[0]])!r}); every byte must be a token")
        special = {k: int(v) for k, v in special_tokens.items()}
        ids = list(special.values())
        if len(set(ids)) != len(ids) or any(not 0 <= i < 2**32 or (i < len(ranks) and ranks[i])
                                            for i in ids):
            raise ValueError(f"tiktoken special token ids must be distinct, below 2**32 and not "
                             f"ids of other tokens: {special}")
        self.name = name
        self.pattern = pattern
        self.special_tokens = special
        self._ranks = list(ranks)
        if _encoding is None:
            try:
                _encoding = tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=mergeable,
                                              special_tokens=special)
            except ValueError as e:
                raise ValueError(f"tiktoken pattern {pattern!r} is not usable: {e}") from None
        self._enc = _encoding

    @classmethod
    def from_name(cls, name: str, file=None) -> "TiktokenTokenizer":
        """Encoding ``name``, from tiktoken's cache/download or, with ``file``, from that
        ``.tiktoken`` file (the encoding's pattern and special tokens still come from tiktoken).
        Raises ValueError saying how to provide the encoding when it cannot be obtained."""
        spec = _spec(name)
        if file is not None:
            return cls(name, spec["pat_str"], dict(spec["special_tokens"]), _read_tiktoken_file(file))
        try:
            enc = tiktoken.get_encoding(name)
        except Exception as e:  # noqa: BLE001 - requests/connection errors, hash mismatch, ...
            raise ValueError(_unavailable_message(name, spec, e)) from None
        ranks = _ranks_list({r: t for t, r in enc._mergeable_ranks.items()}, f"encoding {name!r}")
        return cls(name, enc._pat_str, dict(enc._special_tokens), ranks, enc)

    def state(self) -> dict:
        """Plain values only; ``ranks[i]``: token i's bytes as a latin-1 str ("" for no token)."""
        return {
            "kind": self.kind,
            "name": self.name,
            "pattern": self.pattern,
            "special_tokens": dict(self.special_tokens),
            "ranks": [t.decode("latin-1") for t in self._ranks],
        }

    @classmethod
    def from_state(cls, state: dict) -> "TiktokenTokenizer":
        if not isinstance(state, dict) or state.get("kind") != cls.kind:
            kind = state.get("kind") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"tokenizer kind {kind!r} is not {cls.kind!r}")
        missing = [k for k in ("name", "pattern", "special_tokens", "ranks") if k not in state]
        if missing:
            raise ValueError(f"tiktoken tokenizer state lacks {', '.join(missing)}")
        ranks = state["ranks"]
        if not isinstance(ranks, (list, tuple)) or not all(isinstance(t, str) for t in ranks):
            raise ValueError("tiktoken state 'ranks' must be a list of latin-1 str")
        try:
            ranks = [t.encode("latin-1") for t in ranks]
        except UnicodeEncodeError:
            raise ValueError("tiktoken state 'ranks' holds a str that is not latin-1") from None
        return cls(state["name"], state["pattern"], state["special_tokens"], ranks)
