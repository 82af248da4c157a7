"""Text files -> a token-id cache on disk, streamed in bounded memory.

``data_path`` names one UTF-8 text file, a directory (every file beneath it, sorted by path, hidden
ones skipped) or a glob pattern (``shards/*.txt``, ``corpus/**/*.txt``). Files are read in that order,
with a line break between a file that does not end with one and the next file's text. The first ``1 - val_fraction`` of the
characters form the training split, the rest the validation split.

Preparing the cache reads the files a few MiB at a time, so memory stays bounded whatever the size:

1. scan: every file is checked (UTF-8, no NUL character) while its characters are counted and the
   corpus's character set collected;
2. tokenizer: a char vocabulary is that character set; a BPE is learned from a bounded sample of
   the training split (evenly spaced pieces of it, the whole split when it is short);
3. encode: each split is encoded piece by piece and appended to ``train.bin`` / ``val.bin`` (uint16
   or uint32 ids). For BPE, pieces are cut just before a line break that follows a letter or digit;
   the regex pre-tokenisers of byte-level BPE never join text across such a point, so the ids are
   those of encoding the split whole (characters encode the same wherever a piece ends).

The cache is reused while the files are unchanged (same paths, sizes and modification times) and
the tokenizer is the same. ``progress`` receives an event after every read, and may raise
``PreparationStopped`` to abandon the work: nothing half-written is left behind.
"""

from __future__ import annotations

import codecs
import glob
import json
import math
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..files import remove_abandoned_temporaries, write_atomic, write_text_atomic
from .tokenizer import CharTokenizer, UnknownCharactersError

# Corpora that are fetched when their file is missing: directory name -> URL.
KNOWN_CORPORA = {
    "tinyshakespeare": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
}
OFFLINE_CORPUS_DIR = "python_docs"  # written beside the missing corpus's directory
CACHE_VERSION = 3  # 3: several files, streamed encoding
READ_BYTES = 4 << 20  # bytes read (and encoded) at a time
MAX_CARRY = 16 << 20  # characters held back waiting for a line break before a piece is cut anyway
SAMPLE_PIECE = 1 << 20  # characters in each piece of a tokenizer's training sample (at most)

Progress = Callable[[dict], None]


class DataError(ValueError):
    """The corpus cannot be used; the message names the file and the problem."""


class PreparationStopped(Exception):
    """Raised by a progress callback to abandon preparing the cache (e.g. on Ctrl-C)."""


@dataclass
class CorpusSource:
    files: list[Path]  # the files actually used, in order
    name: str  # what to call the corpus in messages: data_path, or the file used instead of it
    note: str | None = None  # what was done to obtain it (download, offline fallback), for the user


def _offline_text() -> str:
    """The Python reference documentation's topic pages, shipped with every CPython."""
    from pydoc_data.topics import topics

    return "\n".join(topics[k] for k in sorted(topics))


def _is_hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def corpus_files(data_path: str | Path) -> list[Path]:
    """The files ``data_path`` names: itself (a file), every non-hidden file beneath it (a directory), or
    the files a glob pattern matches; sorted by path. Empty when nothing is there; DataError when
    something is there but gives no file."""
    path = Path(data_path)
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not _is_hidden(p, path))
        if not files:
            raise DataError(f"data_path {str(data_path)!r} is a directory with no files in it (files and "
                            f"directories whose names start with '.' are skipped)")
        return files
    if path.exists():
        raise DataError(f"data_path {str(data_path)!r} is not a regular file or a directory")
    if glob.has_magic(str(data_path)):
        matches = sorted(Path(p) for p in glob.glob(str(data_path), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise DataError(f"data_path {str(data_path)!r} is a pattern that matches no files"
                            + (f" (only {len(matches)} directories)" if matches else ""))
        return files
    return []


def obtain_corpus(data_path: str, timeout: float = 15.0) -> CorpusSource:
    """The corpus files for ``data_path``.

    Existing files are used as they are. A missing known corpus (``.../tinyshakespeare/input.txt``)
    is downloaded; when that fails (no network), the Python documentation that ships with CPython is
    written beside it and used instead, and ``note`` says so.
    """
    files = corpus_files(data_path)
    if files:
        return CorpusSource(files, str(data_path))
    path = Path(data_path)
    url = KNOWN_CORPORA.get(path.parent.name) if path.name == "input.txt" else None
    if url is None:
        raise DataError(f"data_path {str(path)!r} does not exist (looked in {str(path.parent.resolve())!r})")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read()
        data.decode("utf-8")
        write_atomic(path, lambda f: f.write(data))
        return CorpusSource([path], str(path), f"downloaded {url} to {path}")
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
        return CorpusSource([fallback], str(fallback), note)


# ----------------------------------------------------------------------------- reading

def _unreadable(path: Path, e: OSError) -> DataError:
    return DataError(f"data_path {str(path)!r} cannot be read: {e}")


def _read_texts(files: Sequence[Path], start: tuple[int, int] = (0, 0), read_bytes: int = READ_BYTES,
                on_read: Callable[[int], None] | None = None) -> Iterator[tuple[int, int | None, str]]:
    """The corpus's text from ``start`` (file index, byte offset of a character's first byte) on, as
    (file index, byte offset of the piece's first character, piece) a few MiB at a time; before the
    text of a file that follows one not ending with a line break, a "\\n" (its byte offset: None).
    ``on_read(n)`` counts the bytes read.
    Raises DataError naming the file for what cannot be read, invalid UTF-8 or a NUL character."""
    first, offset = start
    needs_break = False  # the last text so far does not end with a line break
    for i in range(first, len(files)):
        path = files[i]
        decoder = codecs.getincrementaldecoder("utf-8")()
        pos = offset if i == first else 0  # bytes of the file read so far
        chars = 0  # characters of the file so far
        try:
            f = open(path, "rb")
            f.seek(pos)
        except OSError as e:
            raise _unreadable(path, e) from None
        with f:
            while True:
                try:
                    data = f.read(read_bytes)
                except OSError as e:
                    raise _unreadable(path, e) from None
                pending = len(decoder.getstate()[0])  # bytes of a character cut by the last read
                try:
                    text = decoder.decode(data, final=not data)
                except UnicodeDecodeError as e:
                    at = pos - pending + e.start
                    raise DataError(f"data_path {str(path)!r} is not valid UTF-8: byte offset {at} "
                                    f"(byte 0x{e.object[e.start]:02x}): {e.reason}; is it a binary file?") from None
                if text:
                    nul = text.find("\0")
                    if nul >= 0:
                        raise DataError(f"data_path {str(path)!r} holds a NUL character at character "
                                        f"{chars + nul}; it looks like a binary file")
                    if needs_break and chars == 0:
                        yield i, None, "\n"
                    yield i, pos - pending, text
                    chars, needs_break = chars + len(text), text[-1] != "\n"
                pos += len(data)
                if not data:
                    break
                if on_read is not None:
                    on_read(len(data))


def _byte_progress(stage: str, total: int, progress: Progress) -> Callable[[int], None]:
    """An on_read for _read_texts that reports {"stage", "done", "total"} (bytes), starting at 0 now."""
    done = 0

    def on_read(k: int) -> None:
        nonlocal done
        done += k
        progress({"stage": stage, "done": done, "total": total})

    progress({"stage": stage, "done": 0, "total": total})
    return on_read


@dataclass
class _Scan:
    n_chars: int  # characters of the whole corpus (with the line breaks added between files)
    chars: str  # its distinct characters, sorted
    marks: list[tuple[int, int, int]]  # (character offset in the corpus, file index, byte offset) of each piece


def _scan(files: Sequence[Path], total: int, read_bytes: int, progress: Progress) -> _Scan:
    """Pass 1: check every file (total bytes) and count its characters; bounded memory (one piece at a time)."""
    seen = np.zeros(0x110000, dtype=bool)  # code point -> occurs
    marks, n = [], 0
    for i, byte, text in _read_texts(files, read_bytes=read_bytes, on_read=_byte_progress("scan", total, progress)):
        if byte is not None:  # not a line break added between files
            marks.append((n, i, byte))
        seen[np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)] = True
        n += len(text)
    return _Scan(n, "".join(map(chr, np.flatnonzero(seen))), marks)


def _read_chars(files: Sequence[Path], scan: _Scan, start: int, count: int, read_bytes: int) -> str:
    """Characters [start, start + count) of the corpus, read from the last piece that begins at or before start."""
    at, i, byte = max((m for m in scan.marks if m[0] <= start), key=lambda m: m[0])
    parts, need = [], count
    for _, _, text in _read_texts(files, (i, byte), read_bytes):
        lo = max(0, start - at)  # characters of this piece before start
        at += len(text)
        part = text[lo:lo + need]
        if part:
            parts.append(part)
            need -= len(part)
        if need == 0:
            break
    return "".join(parts)


def training_sample(files: Sequence[Path], scan: _Scan, n_train: int, limit: int,
                    read_bytes: int = READ_BYTES) -> list[str]:
    """At most ``limit`` characters of the training split, for learning a tokenizer: the whole split
    when it is no longer, else pieces of at most SAMPLE_PIECE characters at evenly spaced offsets."""
    if n_train <= limit:
        return [_read_chars(files, scan, 0, n_train, read_bytes)]
    k = math.ceil(limit / SAMPLE_PIECE)
    return [_read_chars(files, scan, j * n_train // k, limit // k, read_bytes) for j in range(k)]


# ----------------------------------------------------------------------------- encoding

def cut_point(text: str) -> int:
    """Where to end a piece of text to be encoded on its own: just before its last line break (\\n, or
    the \\r of \\r\\n) that follows a letter or digit (0 when there is none). The regex pre-tokenisers
    of byte-level BPE (this project's, gpt2's, cl100k_base's, o200k_base's) never put a letter or digit
    and a following line break in one piece, so encoding the two sides apart gives the ids of
    encoding them together."""
    i = len(text)
    while True:
        i = text.rfind("\n", 0, i)
        if i <= 0:
            return 0
        cut = i - 1 if text[i - 1] == "\r" else i
        if cut > 0 and text[cut - 1].isalnum():
            return cut
        i = cut


class _SplitWriter:
    """Encodes one split piece by piece and appends its ids to a file. Characters encode the same
    wherever a piece ends; other tokenizers' pieces end at cut_point."""

    def __init__(self, f, tokenizer):
        self.f, self.tokenizer = f, tokenizer
        self.held = ""  # text since the last cut
        self.tokens = 0
        self.cut_anywhere = tokenizer.kind == "char"

    def add(self, text: str) -> None:
        text = self.held + text
        if self.cut_anywhere:
            cut = len(text)
        else:
            cut = cut_point(text) or (len(text) if len(text) >= MAX_CARRY else 0)
        self.held = text[cut:]
        self._write(text[:cut])

    def close(self) -> None:
        self._write(self.held)
        self.held = ""

    def _write(self, text: str) -> None:
        if text:
            ids = self.tokenizer.encode(text)
            self.f.write(ids.tobytes())
            self.tokens += len(ids)


def _encode(files: Sequence[Path], total: int, n_train: int, tokenizer, train_f, val_f, read_bytes: int,
            progress: Progress) -> tuple[int, int]:
    """Pass 2: encode the training split into train_f and the rest into val_f; returns their token counts."""
    train, val = _SplitWriter(train_f, tokenizer), _SplitWriter(val_f, tokenizer)
    n = 0  # characters so far
    for _, _, text in _read_texts(files, read_bytes=read_bytes, on_read=_byte_progress("encode", total, progress)):
        if n < n_train:
            train.add(text[:n_train - n])
            if n + len(text) >= n_train:
                train.close()
        if n + len(text) > n_train:
            val.add(text[max(0, n_train - n):])
        n += len(text)
    train.close()  # (a no-op unless the files shrank since the scan, which the fingerprint then shows)
    val.close()
    return train.tokens, val.tokens


# ----------------------------------------------------------------------------- the cache

def split_point(n: int, val_fraction: float) -> int:
    """Number of leading characters that form the training split."""
    return int(n * (1.0 - val_fraction))


def check_lengths(name: str, n_train: int, n_val: int, block_size: int, unit: str = "tokens") -> None:
    need = block_size + 1
    if n_train < need or n_val < need:
        raise DataError(
            f"corpus {name!r} is too short: it gives a training split of {n_train} {unit} and a "
            f"validation split of {n_val}, but one window needs block_size + 1 = {need} tokens in each; "
            f"use a longer corpus or a smaller block_size"
        )


@dataclass
class TokenizerSource:
    """What a tokenizer can be built from without holding the corpus in memory."""

    chars: str  # every distinct character of the corpus, sorted (a char vocabulary)
    n_train: int  # characters of the training split
    sample: Callable[[int], list[str]]  # sample(limit): at most limit characters of the training split, in pieces


@dataclass
class Corpus:
    train: np.ndarray  # token ids of the training split (memory-mapped)
    val: np.ndarray  # token ids of the validation split (memory-mapped)
    tokenizer: object  # lm.data.tokenizer: CharTokenizer, or lm.data.bpe's BpeTokenizer / TiktokenTokenizer
    name: str  # what to call it in messages
    files: list[Path]  # the corpus files, in order
    reused_cache: bool  # True when the id cache from an earlier run was used
    val_chars: int  # characters of the validation split (bits per character = nats per token x tokens / chars)


def _fingerprint(files: Sequence[Path], val_fraction: float) -> dict:
    """What the cache was made from: every file's path, size and modification time, and the split."""
    entries = []
    for p in files:
        try:
            st = p.stat()
        except OSError as e:
            raise _unreadable(p, e) from None
        entries.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
    return {"version": CACHE_VERSION, "val_fraction": val_fraction, "files": entries}


def _read_meta(cache_dir: Path) -> dict | None:
    try:
        return json.loads((cache_dir / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def prepare_corpus(data_path: str | Path | Sequence[Path], cache_dir: str | Path, val_fraction: float,
                   block_size: int, tokenizer=None, make: Callable[[TokenizerSource], object] | None = None,
                   spec: dict | None = None, progress: Progress | None = None, name: str | None = None,
                   read_bytes: int = READ_BYTES) -> Corpus:
    """Encode the corpus into ``cache_dir``/{train,val}.bin (or reuse them) and memory-map them.

    ``data_path``: a file, directory or glob (see corpus_files), or the list of files (``name``: what
    to call them in messages). ``tokenizer`` fixes the vocabulary (when resuming); otherwise
    ``make(TokenizerSource)`` builds it (default: a CharTokenizer of the corpus's characters), and
    ``spec`` (plain values naming the tokenizer asked for) decides whether an existing cache was made
    the same way. ``progress`` gets {"stage": "scan" | "encode", "done": bytes, "total": bytes} after
    every read of the files (and may raise PreparationStopped).
    """
    if isinstance(data_path, (str, Path)):
        name, files = name or str(data_path), corpus_files(data_path)
        if not files:
            raise DataError(f"data_path {name!r} does not exist")
    else:
        files = [Path(p) for p in data_path]
        name = name or (str(files[0]) if len(files) == 1 else f"{len(files)} files from {files[0]}")
    cache_dir = Path(cache_dir)
    progress = progress or (lambda event: None)
    fingerprint = _fingerprint(files, val_fraction)
    spec = spec or {"tokenizer": "char"}
    meta = _read_meta(cache_dir)
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
        meta = _write_cache(files, name, cache_dir, val_fraction, block_size, tokenizer, make, spec, progress,
                            fingerprint, read_bytes)
        tok = tokenizer or meta.pop("built")
    check_lengths(name, meta["n_train"], meta["n_val"], block_size)
    dtype = np.dtype(meta["dtype"])
    train = np.memmap(cache_dir / "train.bin", dtype=dtype, mode="r")
    val = np.memmap(cache_dir / "val.bin", dtype=dtype, mode="r")
    return Corpus(train, val, tok, name, files, reuse, meta["val_chars"])


def _write_cache(files, name, cache_dir: Path, val_fraction, block_size, tokenizer, make, spec, progress,
                 fingerprint, read_bytes) -> dict:
    """Scan, build the tokenizer, encode; returns the new meta.json (with the tokenizer under "built")."""
    total = sum(size for _, size, _ in fingerprint["files"])
    scan = _scan(files, total, read_bytes, progress)
    if scan.n_chars == 0:
        raise DataError(f"data_path {name!r} is empty" if len(files) == 1 else
                        f"data_path {name!r}: its {len(files)} files are all empty")
    n_train = split_point(scan.n_chars, val_fraction)
    # no split can hold more tokens than characters: a corpus too short in characters is refused now
    check_lengths(name, n_train, scan.n_chars - n_train, block_size,
                  "tokens" if tokenizer is None and make is None else "characters")
    if tokenizer is None:
        source = TokenizerSource(scan.chars, n_train,
                                 lambda limit: training_sample(files, scan, n_train, limit, read_bytes))
        tok = (make or (lambda s: CharTokenizer(s.chars)))(source)
    else:
        tok = tokenizer
    (cache_dir / "meta.json").unlink(missing_ok=True)  # it vouches for the .bin files: gone until they are
    remove_abandoned_temporaries(cache_dir)  # of a preparation that was killed (they can be large)
    counts = {}

    def write_both(train_f):
        def write_val(val_f):
            problem = None
            try:
                counts["n"] = _encode(files, total, n_train, tok, train_f, val_f, read_bytes, progress)
            except UnknownCharactersError as e:
                problem = f"corpus {name!r} does not fit the checkpoint's vocabulary: {e}"
            if _fingerprint(files, val_fraction) != fingerprint:  # (new characters would say so too)
                problem = (f"corpus {name!r} changed while it was being prepared (a file's size or modification "
                           f"time); nothing was kept, run again once it is complete")
            if problem:
                raise DataError(problem)

        write_atomic(cache_dir / "val.bin", write_val)

    write_atomic(cache_dir / "train.bin", write_both)
    n_train_tokens, n_val_tokens = counts["n"]
    meta = {"fingerprint": fingerprint, "spec": spec, "tokenizer": tok.state(), "dtype": tok.dtype.name,
            "n_train": n_train_tokens, "n_val": n_val_tokens, "val_chars": scan.n_chars - n_train}
    write_text_atomic(cache_dir / "meta.json", json.dumps(meta, ensure_ascii=False))  # last
    return {**meta, "built": tok}
