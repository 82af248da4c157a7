"""Toy sequence-to-sequence tasks whose right answers are known: copy, reverse, sort, add.

Every task shares one token layout: 0 = PAD, 1 = BOS, 2 = EOS, then the task's symbols.
Examples are drawn fresh for every training batch (a pure function of seed and batch
index, so resumed runs see the same data) and a fixed held-out set is drawn from its
own seed. "Length" is the number of symbols in the source (copy, reverse, sort) or the
number of digits of each operand (add).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import torch

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIALS = 3


class Task(ABC):
    """A family of (source, target) token sequences over num_symbols symbols."""

    name = ""

    def __init__(self, num_symbols: int):
        self.num_symbols = num_symbols

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + self.num_symbols

    @abstractmethod
    def pair(self, length: int, g: torch.Generator) -> tuple[list[int], list[int]]:
        """One example of this length, as symbol lists (before the special-token offset)."""

    def max_lengths(self, length: int) -> tuple[int, int]:
        """(source, target) token counts of the longest example of this length, EOS and BOS included."""
        return length, length + 1

    # ---- text <-> symbols, for sample.py
    def parse(self, text: str) -> list[int]:
        tokens = text.split()
        bad = [t for t in tokens if not (t.isdigit() and int(t) < self.num_symbols)]
        if not tokens or bad:
            raise ValueError(f"input {text!r} must be space-separated symbols 0..{self.num_symbols - 1}"
                             + (f"; not symbols: {', '.join(bad)}" if bad else ""))
        return [int(t) for t in tokens]

    def render(self, symbols: list[int]) -> str:
        return " ".join(str(s) for s in symbols)

    # ---- shared machinery
    def examples(self, n: int, min_len: int, max_len: int, g: torch.Generator) -> list[tuple[list[int], list[int]]]:
        """n (source ids, target ids) pairs with lengths uniform in [min_len, max_len], as token ids."""
        lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
        out = []
        for length in lengths:
            src, tgt = self.pair(length, g)
            out.append((self.to_ids(src), self.to_ids(tgt)))
        return out

    def to_ids(self, symbols: list[int]) -> list[int]:
        return [NUM_SPECIALS + s for s in symbols]

    def from_ids(self, ids: list[int]) -> list[int]:
        """Token ids -> symbols, stopping at EOS and skipping other special tokens."""
        out = []
        for i in ids:
            if i == EOS:
                break
            if i >= NUM_SPECIALS:
                out.append(i - NUM_SPECIALS)
        return out

    def state(self) -> dict:
        return {"kind": "task", "task": self.name, "num_symbols": self.num_symbols}

    def _symbols(self, length: int, g: torch.Generator) -> list[int]:
        return torch.randint(self.num_symbols, (length,), generator=g).tolist()


class CopyTask(Task):
    """target = source."""

    name = "copy"

    def pair(self, length, g):
        src = self._symbols(length, g)
        return src, list(src)


class ReverseTask(Task):
    """target = source reversed."""

    name = "reverse"

    def pair(self, length, g):
        src = self._symbols(length, g)
        return src, src[::-1]


class SortTask(Task):
    """target = source sorted ascending."""

    name = "sort"

    def pair(self, length, g):
        src = self._symbols(length, g)
        return src, sorted(src)


class AddTask(Task):
    """Source "a+b", target "a+b's sum", most significant digit first, in base num_symbols (<= 10).

    Length = digits of the longer operand (the other has 1..length digits); symbols are the
    digits and '+'.
    """

    name = "add"

    @property
    def plus(self) -> int:
        return self.num_symbols  # the symbol after the digits

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + self.num_symbols + 1

    def _number(self, digits: int, g) -> int:
        base = self.num_symbols
        lo = 0 if digits == 1 else base ** (digits - 1)
        return int(torch.randint(lo, base**digits, (1,), generator=g))

    def _digits(self, n: int) -> list[int]:
        out = []
        while True:
            n, d = divmod(n, self.num_symbols)
            out.append(d)
            if n == 0:
                return out[::-1]

    def pair(self, length, g):
        other = int(torch.randint(1, length + 1, (1,), generator=g))  # b has up to as many digits as a
        if int(torch.randint(2, (1,), generator=g)):
            length, other = other, length
        a, b = self._number(length, g), self._number(other, g)
        return self._digits(a) + [self.plus] + self._digits(b), self._digits(a + b)

    def max_lengths(self, length):
        return 2 * length + 1, length + 2

    def parse(self, text):
        compact = re.sub(r"\s+", "", text)
        base = self.num_symbols
        m = re.fullmatch(r"([0-9]+)\+([0-9]+)", compact)
        if not m or any(int(c) >= base for c in m.group(1) + m.group(2)):
            raise ValueError(f"input {text!r} must look like '123+45' with digits 0..{base - 1}")
        return [int(c) for c in m.group(1)] + [self.plus] + [int(c) for c in m.group(2)]

    def render(self, symbols):
        return "".join("+" if s == self.plus else str(s) for s in symbols)


TASKS = {t.name: t for t in (CopyTask, ReverseTask, SortTask, AddTask)}


def make_task(name: str, num_symbols: int) -> Task:
    """Build a task by name; raises ValueError listing the valid names."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: lm, {', '.join(TASKS)}")
    if name == "add" and not 2 <= num_symbols <= 10:
        raise ValueError(f"num_symbols {num_symbols} is not allowed for task 'add'; it is the number base, 2..10")
    return TASKS[name](num_symbols)


def task_from_state(state: dict) -> Task:
    return make_task(state["task"], state["num_symbols"])
