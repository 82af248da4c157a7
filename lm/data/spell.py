"""Task spell: the sentences of a corpus, corrupted by lm.data.noise; the model writes back the clean one.

Sentences come from the corpus files (data_path) through lm.data.sentences, read line by line so memory
stays bounded whatever the corpus's size. The first ``1 - val_fraction`` of the corpus's bytes form the
training split, the rest the validation split, each through its own SentenceSplitter (max_chars =
max_len, so a long sentence is cut at its semicolons, colons and commas first). Every sentence of
min_len..max_len characters is kept: written to ``train.txt`` / ``val.txt`` in the run's data directory,
one per line, with the byte offset of each line in ``train.idx.npy`` / ``val.idx.npy``, and read back through a
memory map (SentenceFile). The files are reused while the corpus and these settings are unchanged.

SpellTask is the vocabulary: a tokenizer (char, or a BPE learned from the training sentences) whose
ids follow the seq2seq specials (PAD, BOS, EOS). Its text form is the sentence itself.
"""

from __future__ import annotations

import json
import mmap
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from ..files import write_atomic, write_text_atomic
from .corpus import DataError, _fingerprint
from .sentences import SentenceSplitter, normalise_space
from .tasks import TokenLayout
from .tokenizer import CharTokenizer, UnknownCharactersError, tokenizer_from_state
from ..spelling import keep_known_changes

SENTENCES_VERSION = 1  # bump when the sentence rules change: cached sentence files are then rebuilt
PROGRESS_BYTES = 4 << 20  # a progress event after every this many bytes read


class SpellTask(TokenLayout):
    """The vocabulary of task spell: tokenizer ids shifted past the specials; text in, text out."""

    name = "spell"

    def __init__(self, tokenizer, known_words: Sequence[str] = ()):
        """known_words: the lowercase words of the training sentences (keep_known_changes' vocabulary)."""
        super().__init__(tokenizer.vocab_size)
        self.tokenizer = tokenizer
        self.known_words = list(known_words)
        self._known = frozenset(self.known_words)

    def keep_known_changes(self, source: str, output: str) -> str:
        """The known-word filter (lm.spelling.keep_known_changes) over this vocabulary's words."""
        return keep_known_changes(source, output, self._known)

    def encode(self, text: str) -> list[int]:
        """A sentence -> its token ids (specials offset included); UnknownCharactersError for a character
        a char vocabulary does not have."""
        return self.to_ids([int(i) for i in self.tokenizer.encode(text)])

    def unknown_characters(self, text: str) -> list[str]:
        """The distinct characters of text that the vocabulary cannot encode, in order of appearance (a
        byte-level BPE encodes everything: none)."""
        if not isinstance(self.tokenizer, CharTokenizer):
            return []
        known = set(self.tokenizer.chars)
        return list(dict.fromkeys(c for c in text if c not in known))

    def parse(self, text: str) -> list[int]:
        """A sentence as typed (whitespace normalised) -> symbols; ValueError when empty or not encodable."""
        sentence = normalise_space(text)
        if not sentence:
            raise ValueError("the input is empty: give a sentence to correct, e.g. --input \"Thou art a vilain\"")
        try:
            return [int(i) for i in self.tokenizer.encode(sentence)]
        except UnknownCharactersError as e:
            raise ValueError(f"the input cannot be encoded: {e}; this model knows only the characters of "
                             f"its training text") from None

    def render(self, symbols: list[int]) -> str:
        return self.tokenizer.decode(symbols)

    def symbol_text(self, symbol: int) -> str:
        return self.tokenizer.decode([symbol])

    def target_slots(self, source: list[int]) -> int:
        """A correction may be longer than its source (the noise deleted letters): allow a quarter more, and
        EOS (the bound of randomized positions)."""
        return len(source) + len(source) // 4 + 2

    def max_lengths(self, length: int) -> tuple[int, int]:
        return length + length // 4 + 2, length + 1

    def state(self) -> dict:
        return {**super().state(), "tokenizer": self.tokenizer.state(), "known_words": " ".join(self.known_words)}

    @classmethod
    def from_state(cls, state: dict) -> "SpellTask":
        return cls(tokenizer_from_state(state["tokenizer"]), state.get("known_words", "").split())


# ----------------------------------------------------------------------------- sentence files

class SentenceFile:
    """The sentences of one split, one per line of a text file, read at random through a memory map."""

    def __init__(self, path: Path):
        self.path = path
        self.offsets = np.load(path.with_suffix(".idx.npy"), mmap_mode="r")  # (n + 1,) byte offsets of the lines
        self._file = open(path, "rb")
        size = path.stat().st_size
        self._data = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else b""

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1]) - 1  # the line, without its "\n"
        return self._data[start:end].decode("utf-8")

    def __iter__(self) -> Iterator[str]:
        return (self[i] for i in range(len(self)))


@dataclass
class Sentences:
    train: SentenceFile
    val: SentenceFile
    reused: bool  # True when an earlier run's sentence files were used
    seen: tuple[int, int]  # sentences found in each split, of any length (before min_len..max_len)


class _SplitWriter:
    """Appends the kept sentences of one split to its text file, one per line, recording line offsets."""

    def __init__(self, f, min_len: int, max_len: int):
        self.f, self.min_len, self.max_len = f, min_len, max_len
        self.offsets = array("Q", [0])  # byte offset of every line, and of the end
        self.seen = 0  # sentences of any length

    def add(self, sentences: list[str]) -> None:
        self.seen += len(sentences)
        for s in sentences:
            if self.min_len <= len(s) <= self.max_len:
                line = (s + "\n").encode("utf-8")
                self.f.write(line)
                self.offsets.append(self.offsets[-1] + len(line))


def _read_lines(path: Path) -> Iterator[tuple[bytes, str]]:
    """(raw bytes, text) of every line of a file; DataError when it cannot be read or is not UTF-8."""
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    yield raw, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"data_path {str(path)!r} is not UTF-8 text: {e}") from None
    except OSError as e:
        raise DataError(f"data_path {str(path)!r} cannot be read: {e}") from None


def write_sentences(files: Sequence[Path], val_fraction: float, writers: tuple[_SplitWriter, _SplitWriter],
                    max_len: int, progress: Callable[[dict], None]) -> None:
    """Stream the corpus's sentences into the two writers (train, val), line by line. The first
    1 - val_fraction of the bytes are the training split; a line belongs to the split where it starts,
    and the end of a file ends a sentence."""
    total = sum(p.stat().st_size for p in files)
    boundary = int(total * (1.0 - val_fraction))
    splitters = (SentenceSplitter(max_chars=max_len), SentenceSplitter(max_chars=max_len))
    done, reported, split = 0, 0, 0
    for path in files:
        for raw, line in _read_lines(path):
            if split == 0 and done >= boundary:
                writers[0].add(splitters[0].close())  # the training split ends here
                split = 1
            writers[split].add(splitters[split].feed(line))
            done += len(raw)
            if done - reported >= PROGRESS_BYTES:
                progress({"stage": "sentences", "done": done, "total": total})
                reported = done
        writers[split].add(splitters[split].feed("\n"))  # a blank line: the file's last sentence ends
    for k in (0, 1):
        writers[k].add(splitters[k].close())
    progress({"stage": "sentences", "done": total, "total": total})


def prepare_sentences(files: Sequence[Path], cache_dir: Path, val_fraction: float, min_len: int, max_len: int,
                      progress: Callable[[dict], None]) -> Sentences:
    """The training and validation sentences of the corpus, cached in cache_dir (see the module docstring).
    DataError when a split has no sentence of min_len..max_len characters."""
    meta = {"version": SENTENCES_VERSION, "corpus": _fingerprint(files, val_fraction), "min_len": min_len,
            "max_len": max_len}
    train_path, val_path, meta_path = cache_dir / "train.txt", cache_dir / "val.txt", cache_dir / "meta.json"
    try:
        saved = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        saved = None
    files_there = all(p.exists() for p in (train_path, val_path, train_path.with_suffix(".idx.npy"),
                                            val_path.with_suffix(".idx.npy")))
    reused = files_there and saved is not None and {k: saved.get(k) for k in meta} == meta
    if not reused:
        writers: list[_SplitWriter] = []

        def write_train(train_f):
            def write_val(val_f):
                writers.extend([_SplitWriter(train_f, min_len, max_len), _SplitWriter(val_f, min_len, max_len)])
                write_sentences(files, val_fraction, (writers[0], writers[1]), max_len, progress)
            write_atomic(val_path, write_val)

        write_atomic(train_path, write_train)  # both files, or neither, are replaced
        for name, w in zip(("training", "validation"), writers):
            if len(w.offsets) == 1:
                raise DataError(f"the {name} split of the corpus has no sentence of {min_len}..{max_len} "
                                f"characters (min_len..max_len); use a longer corpus or other lengths")
        for path, w in ((train_path, writers[0]), (val_path, writers[1])):
            write_atomic(path.with_suffix(".idx.npy"), lambda f, o=w.offsets: np.save(f, np.frombuffer(o, np.uint64)))
        saved = {**meta, "seen": [writers[0].seen, writers[1].seen]}
        write_text_atomic(meta_path, json.dumps(saved))
    return Sentences(SentenceFile(train_path), SentenceFile(val_path), reused, tuple(saved["seen"]))
