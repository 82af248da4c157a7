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
    """Source "a+b", target a + b, in base num_symbols (<= 10); symbols are the digits and '+'.

    The model sees fixed-width numbers, least significant digit first and padded with zeros:
    with width 4, 123+45 is "3 2 1 0 + 5 4 0 0" and the sum "8 6 1 0 0" (width + 1 digits).
    Digit i of a, of b and of the sum then always sit at the same positions, and carries
    flow in reading order; both are known to make addition far easier for a small transformer
    to learn. parse() and render() use the usual notation ("123+45" -> "168").
    Length = digits of the longer operand (the other has 1..length digits); width = the
    longest length the run uses (max(max_len, eval_long_len)).
    """

    name = "add"

    def __init__(self, num_symbols: int, width: int):
        super().__init__(num_symbols)
        self.width = width

    @property
    def plus(self) -> int:
        return self.num_symbols  # the symbol after the digits

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + self.num_symbols + 1

    def state(self) -> dict:
        return {**super().state(), "width": self.width}

    def _number(self, digits: int, g) -> int:
        base = self.num_symbols
        lo = 0 if digits == 1 else base ** (digits - 1)
        return int(torch.randint(lo, base**digits, (1,), generator=g))

    def _digits(self, n: int, width: int) -> list[int]:
        """Digits of n, least significant first, zero-padded to width."""
        out = []
        while n:
            n, d = divmod(n, self.num_symbols)
            out.append(d)
        if len(out) > width:
            raise ValueError(f"{n} has more than {width} digits")
        return out + [0] * (width - len(out))

    def pair(self, length, g):
        other = int(torch.randint(1, length + 1, (1,), generator=g))  # b has up to as many digits as a
        if int(torch.randint(2, (1,), generator=g)):
            length, other = other, length
        a, b = self._number(length, g), self._number(other, g)
        w = self.width
        return self._digits(a, w) + [self.plus] + self._digits(b, w), self._digits(a + b, w + 1)

    def max_lengths(self, length):
        return 2 * self.width + 1, self.width + 2

    def parse(self, text):
        compact = re.sub(r"\s+", "", text)
        base, w = self.num_symbols, self.width
        m = re.fullmatch(r"([0-9]+)\+([0-9]+)", compact)
        if not m or any(int(c) >= base for c in m.group(1) + m.group(2)):
            raise ValueError(f"input {text!r} must look like '123+45' with digits 0..{base - 1}")
        numbers = [group.lstrip("0") or "0" for group in m.groups()]
        if max(len(n) for n in numbers) > w:
            raise ValueError(f"input {text!r} has a number of more than {w} digits, the most this model was built for")
        a, b = ([int(c) for c in reversed(n)] + [0] * (w - len(n)) for n in numbers)
        return a + [self.plus] + b

    def render(self, symbols):
        """Symbols (numbers least significant digit first) -> the usual text, e.g. '123+45'."""
        numbers, current = [], []
        for s in symbols + [self.plus]:
            if s == self.plus:
                numbers.append("".join(str(d) for d in reversed(current)).lstrip("0") or "0")
                current = []
            else:
                current.append(s)
        return "+".join(numbers)


TASKS = {t.name: t for t in (CopyTask, ReverseTask, SortTask, AddTask)}


def make_task(name: str, num_symbols: int, max_len: int = 0) -> Task:
    """Build a task by name; raises ValueError listing the valid names.

    max_len: the longest length the task will be asked for (add pads its numbers to it).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: lm, {', '.join(TASKS)}")
    if name == "add":
        if not 2 <= num_symbols <= 10:
            raise ValueError(f"num_symbols {num_symbols} is not allowed for task 'add'; it is the number base, 2..10")
        return AddTask(num_symbols, max_len)
    return TASKS[name](num_symbols)


def task_from_state(state: dict) -> Task:
    return make_task(state["task"], state["num_symbols"], state.get("width", 0))
