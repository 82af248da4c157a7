"""Text corpus -> token-id cache on disk -> random block_size training windows.

The corpus is read once, checked (UTF-8, long enough), encoded with a character
vocabulary and written as two flat arrays of ids (``train.bin``, ``val.bin``, uint16
or uint32) that are memory-mapped for batching. The cache is reused while the
corpus file is unchanged (same size and modification time).

Batches are a pure function of (seed, index): batch ``i`` always holds the same
windows, whichever process builds it and whenever. That makes resumed runs replay
exactly the same data order, with or without DataLoader worker processes.
"""

from __future__ import annotations

import hashlib
import json
import signal
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .files import write_atomic, write_text_atomic
from .tokenizer import CharTokenizer

# Corpora that are fetched when their file is missing: directory name -> URL.
KNOWN_CORPORA = {
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}
OFFLINE_CORPUS_DIR = "python_docs"  # written beside the missing corpus's directory
CACHE_VERSION = 2  # 2: the tokenizer's state and val_chars in meta.json


class DataError(ValueError):
    """The corpus cannot be used; the message names the file and the problem."""


@dataclass
class CorpusSource:
    path: Path  # the file actually used
    note: str | None = None  # what was done to obtain it (download, offline fallback), for the user


def _offline_text() -> str:
    """The Python reference documentation's topic pages, shipped with every CPython."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def obtain_corpus(data_path: str, timeout: float = 15.0) -> CorpusSource:
    """Return the corpus file to use for ``data_path``.

    An existing file is used as it is. A missing known corpus (``.../tinyshakespeare/input.txt``)
    is downloaded; when that fails (no network), the Python documentation that ships with
    CPython is written beside it and used instead, and ``note`` says so.
    """
    path = Path(data_path)
    if path.exists():
        return CorpusSource(path)
    url = KNOWN_CORPORA.get(path.parent.name) if path.name == "input.txt" else None
    if url is None:
        raise DataError(f"data_path {str(path)!r} does not exist (looked in {str(path.parent.resolve())!r})")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
        data.decode("utf-8")
        write_atomic(path, lambda f: f.write(data))
        return CorpusSource(path, f"downloaded {url} to {path}")
    except (OSError, UnicodeDecodeError) as e:  # URLError and socket timeouts are OSErrors
        fallback = path.parent.parent / OFFLINE_CORPUS_DIR / "input.txt"
        if not fallback.exists():
            write_text_atomic(fallback, _offline_text())
        note = (
            f"{path} is missing and could not be downloaded from {url} ({e}).\n"
            f"TRAINING ON THE OFFLINE FALLBACK CORPUS INSTEAD: the Python reference documentation "
            f"shipped with CPython, written to {fallback}.\n"
            f"To train on Tiny Shakespeare, put its input.txt at {path} or pass --data_path=<file>."
        )
        return CorpusSource(fallback, note)


def check_file(path: Path) -> None:
    """Raise DataError unless path is an existing file."""
    if path.is_dir():
        raise DataError(f"data_path {str(path)!r} is a directory; give a UTF-8 text file")
    if not path.exists():
        raise DataError(f"data_path {str(path)!r} does not exist")


def read_corpus(path: str | Path) -> str:
    """Read a UTF-8 text file, raising DataError that names the file for anything unusable."""
    path = Path(path)
    check_file(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"data_path {str(path)!r} cannot be read: {e}") from None
    if not raw:
        raise DataError(f"data_path {str(path)!r} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"data_path {str(path)!r} is not valid UTF-8: byte offset {e.start} "
            f"(byte 0x{raw[e.start]:02x}): {e.reason}; is it a binary file?"
        ) from None
    nul = text.find("\0")
    if nul >= 0:
        raise DataError(f"data_path {str(path)!r} holds a NUL character at character {nul}; it looks like a binary file")
    return text


def split_point(n: int, val_fraction: float) -> int:
    """Number of leading tokens that form the training split."""
    return int(n * (1.0 - val_fraction))


def check_lengths(path, n_train: int, n_val: int, block_size: int) -> None:
    need = block_size + 1
    if n_train < need or n_val < need:
        raise DataError(
            f"corpus {str(path)!r} is too short: it gives a training split of {n_train} tokens and a "
            f"validation split of {n_val}, but one window needs block_size + 1 = {need} tokens in each; "
            f"use a longer corpus or a smaller block_size"
        )


@dataclass
class Corpus:
    train: np.ndarray  # token ids of the training split (memory-mapped)
    val: np.ndarray  # token ids of the validation split (memory-mapped)
    tokenizer: object  # lm.tokenizer: CharTokenizer, or lm.bpe's BpeTokenizer / TiktokenTokenizer
    path: Path  # the corpus file
    reused_cache: bool  # True when the id cache from an earlier run was used
    val_chars: int  # characters of the validation split (bits per character = nats per token x tokens / chars)


def prepare_corpus(path: str | Path, cache_dir: str | Path, val_fraction: float, block_size: int,
                   tokenizer=None, make: Callable[[str, int], object] | None = None,
                   spec: dict | None = None) -> Corpus:
    """Encode ``path`` into ``cache_dir``/{train,val}.bin (or reuse them) and memory-map them.

    The text is split by characters (the last val_fraction is validation) and each split encoded on its
    own. ``tokenizer`` fixes the vocabulary (when resuming); otherwise ``make(text, n_train)`` builds it
    (default: a CharTokenizer of the corpus's characters), and ``spec`` (plain values naming the
    tokenizer asked for) decides whether an existing cache was made the same way.
    """
    path = Path(path)
    cache_dir = Path(cache_dir)
    check_file(path)
    stat = path.stat()
    fingerprint = {
        "version": CACHE_VERSION,
        "source": str(path.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "val_fraction": val_fraction,
    }
    spec = spec or {"tokenizer": "char"}
    meta_path = cache_dir / "meta.json"
    meta = None
    if meta_path.exists():
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = None
    reuse = (
        meta is not None
        and meta.get("fingerprint") == fingerprint
        and (meta.get("tokenizer") == tokenizer.state() if tokenizer is not None else meta.get("spec") == spec)
        and (cache_dir / "train.bin").exists()
        and (cache_dir / "val.bin").exists()
    )
    if reuse:
        from .tokenizer import tokenizer_from_state

        tok = tokenizer or tokenizer_from_state(meta["tokenizer"])
    else:
        text = read_corpus(path)
        n_train = split_point(len(text), val_fraction)
        tok = tokenizer or (make or (lambda t, n: CharTokenizer.from_text(t)))(text, n_train)
        try:
            parts = {"train": tok.encode(text[:n_train]), "val": tok.encode(text[n_train:])}
        except ValueError as e:
            raise DataError(f"corpus {str(path)!r} does not fit the checkpoint's vocabulary: {e}") from None
        check_lengths(path, len(parts["train"]), len(parts["val"]), block_size)
        for name, part in parts.items():
            write_atomic(cache_dir / f"{name}.bin", part.tofile)
        meta = {"fingerprint": fingerprint, "spec": spec, "tokenizer": tok.state(), "dtype": tok.dtype.name,
                "n_train": len(parts["train"]), "n_val": len(parts["val"]), "val_chars": len(text) - n_train}
        write_text_atomic(meta_path, json.dumps(meta, ensure_ascii=False))  # last: it vouches for the .bin files
    check_lengths(path, meta["n_train"], meta["n_val"], block_size)
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(cache_dir / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(cache_dir / "val.bin", dtype=dtype, mode="r")
    return Corpus(train, val, tok, path, reuse, meta["val_chars"])


def seeded_generator(*key: int) -> torch.Generator:
    """A random generator determined by a tuple of non-negative ints, e.g. (seed, stream, batch index).

    The tuple is hashed with BLAKE2b into a 63-bit seed: distinct keys give distinct generators
    (up to a 2**-63 chance), the same key gives the same generator in every process, run, and
    version of Python.
    """
    if any(k < 0 for k in key):
        raise ValueError(f"seeded_generator takes non-negative ints, got {key}")
    digest = hashlib.blake2b(b"".join(k.to_bytes(8, "little") for k in key), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)


def window_batch(ids: np.ndarray, batch_size: int, block_size: int, seed: int, index: int,
                 stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch number ``index`` of random windows: inputs x and next-token targets y, both (B, T) int64."""
    g = seeded_generator(seed, stream, index)
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=g).numpy()
    positions = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
    xy = torch.from_numpy(np.asarray(ids[positions], dtype=np.int64))  # (B, T+1)
    return xy[:, :-1], xy[:, 1:]


class WindowBatches(torch.utils.data.Dataset):
    """Map-style view: item ``i`` is ``window_batch(..., index=i)``; lets a DataLoader's workers build batches."""

    def __init__(self, ids: np.ndarray, batch_size: int, block_size: int, seed: int, stream: int = 0):
        self.ids, self.batch_size, self.block_size, self.seed, self.stream = ids, batch_size, block_size, seed, stream

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int):
        return window_batch(self.ids, self.batch_size, self.block_size, self.seed, index, self.stream)


def batch_iterator(ids: np.ndarray, batch_size: int, block_size: int, seed: int, start: int,
                   num_workers: int = 0, stream: int = 0, stride: int = 1):
    """Yield batches start, start + stride, start + 2 * stride, ... forever (stride > 1: one process's
    share of a data-parallel run, see lm.distributed); with num_workers > 0 they are built in worker
    processes."""
    if num_workers == 0:
        index = start
        while True:
            yield window_batch(ids, batch_size, block_size, seed, index, stream)
            index += stride
    dataset = WindowBatches(ids, batch_size, block_size, seed, stream)

    class _From(torch.utils.data.Sampler):
        def __iter__(self):
            index = start
            while True:
                yield index
                index += stride

    # The loader's own generator: without it, starting the workers draws from the global RNG and
    # shifts every later dropout mask, so a resumed run would differ from an uninterrupted one.
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=_From(), num_workers=num_workers,
                                         generator=seeded_generator(seed, stream, start),
                                         worker_init_fn=_ignore_interrupts)
    yield from loader


def _ignore_interrupts(worker_id: int) -> None:
    """In a batch worker: leave Ctrl-C, which a terminal sends to the whole process group, to the training
    process, which checkpoints at the next step boundary and then ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def sequential_windows(ids: np.ndarray, block_size: int, batch_size: int):
    """Every token of ``ids`` (but the first) predicted exactly once: consecutive, non-overlapping windows.

    Yields (x, y) batches; the last window may be shorter than block_size and comes in a batch of its own.
    """
    n = len(ids) - 1  # tokens that can be predicted
    full = n // block_size
    for b0 in range(0, full, batch_size):
        rows = [np.asarray(ids[i * block_size : (i + 1) * block_size + 1], dtype=np.int64)
                for i in range(b0, min(b0 + batch_size, full))]
        xy = torch.from_numpy(np.stack(rows))
        yield xy[:, :-1], xy[:, 1:]
    rest = n - full * block_size
    if rest:
        xy = torch.from_numpy(np.asarray(ids[full * block_size :], dtype=np.int64))[None]
        yield xy[:, :-1], xy[:, 1:]
