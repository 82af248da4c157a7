"""Toy sequence-to-sequence tasks whose right answers are known: copy, reverse, sort, add, grid.

Every task shares one token layout: 0 = PAD, 1 = BOS, 2 = EOS, then the task's symbols.
Examples are drawn fresh for every training batch (a pure function of seed and batch
index, so resumed runs see the same data) and a fixed held-out set is drawn from its
own seed. "Length" is the number of symbols in the source (copy, reverse, sort), the
number of digits of each operand (add) or the side of a grid (grid: each of its height
and width is drawn in the range).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod

import torch

from ..config import GRID_OPS  # the operations' names: DataConfig.grid_op's Literal

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIALS = 3


class TokenLayout:
    """Token ids of a seq2seq vocabulary of num_symbols symbols: 0 = PAD, 1 = BOS, 2 = EOS, then the
    symbols; text <-> symbols for sample.py and visualize.py. Task (generated examples) and
    lm.data.spell.SpellTask (sentences of a corpus) build on it."""

    name = ""

    def __init__(self, num_symbols: int):
        self.num_symbols = num_symbols

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + self.num_symbols

    def max_lengths(self, length: int) -> tuple[int, int]:
        """(source, target) token counts of the longest example of this length, EOS and BOS included."""
        return length, length + 1

    def target_slots(self, source: list[int]) -> int:
        """The most decoder inputs (BOS + target symbols) the target of this source can need, which is
        also the number of tokens predicted, EOS included; from the source symbols alone (no offset)."""
        return len(source) + 1

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

    def symbol_text(self, symbol: int) -> str:
        """How one symbol is written (an axis label of an attention map)."""
        return str(symbol)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Token ids -> one label each: <pad>, <bos>, <eos>, or the symbol as symbol_text writes it."""
        specials = {PAD: "<pad>", BOS: "<bos>", EOS: "<eos>"}
        return [specials[i] if i in specials else self.symbol_text(i - NUM_SPECIALS) for i in ids]

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


class Task(TokenLayout, ABC):
    """A family of generated (source, target) token sequences over num_symbols symbols."""

    @abstractmethod
    def pair(self, length: int, g: torch.Generator) -> tuple[list[int], list[int]]:
        """One example of this length, as symbol lists (before the special-token offset)."""

    def examples(self, n: int, min_len: int, max_len: int, g: torch.Generator) -> list[tuple[list[int], list[int]]]:
        """n (source ids, target ids) pairs with lengths uniform in [min_len, max_len], as token ids."""
        lengths = torch.randint(min_len, max_len + 1, (n,), generator=g).tolist()
        out = []
        for length in lengths:
            src, tgt = self.pair(length, g)
            out.append((self.to_ids(src), self.to_ids(tgt)))
        return out

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

    def symbol_text(self, symbol):
        return "+" if symbol == self.plus else str(symbol)

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

    def target_slots(self, source):
        return self.width + 2  # the sum always has width + 1 digits, then EOS

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


class GridTask(Task):
    """Source: a grid of colours; target: the same grid after op, one of GRID_OPS.

    A grid has H rows and W columns of colours 0..num_symbols-1 (2..10 colours, written as
    single digits); colour 0 is the background (an empty cell). Layout: the rows in order,
    each row's colours, rows separated by the symbol sep = num_symbols (no trailing one), so
    a 3x3 grid is 11 symbols. Ops:
      rotate    90 degrees clockwise, HxW -> WxH: out[r][c] = in[H-1-c][r]
      transpose HxW -> WxH: out[r][c] = in[c][r]
      flip      mirror left-right: out[r][c] = in[r][W-1-c]
      gravity   every coloured cell falls to the bottom of its column, the coloured cells of a
                column keeping their order; background fills the top
    examples() draws H and W independently, each uniform in [min_len, max_len] (so grids are
    square or not); each cell is background with probability 1/2, else a uniform colour
    1..num_symbols-1; pair(length) gives a grid whose longer side is length.
    Coordinates, for 2D positional encodings: source_coords() gives the (row, col) of every
    source symbol, a separator ending row r at (r, W); target_coords() gives, for each
    decoder input, the (row, col) in the output grid (H'xW', known from the source's shape
    and the op) of the token it predicts, the separator after row r at (r, W') and the final
    EOS at (H'-1, W'). The target has H' * (W' + 1) - 1 symbols, so target_slots() is H' * (W' + 1).
    parse() and render() use rows of digits separated by "/", e.g. "012/340/567".
    """

    name = "grid"

    def __init__(self, num_symbols: int, op: str = "rotate"):
        if op not in GRID_OPS:
            raise ValueError(f"unknown grid op {op!r}; choose one of: {', '.join(GRID_OPS)}")
        if not 2 <= num_symbols <= 10:
            raise ValueError(f"num_symbols {num_symbols} is not allowed for task 'grid'; it is the number of "
                             "colours, 2..10 (each written as one digit)")
        super().__init__(num_symbols)
        self.op = op

    @property
    def sep(self) -> int:
        return self.num_symbols  # the symbol after the colours: ends a row

    @property
    def vocab_size(self) -> int:
        return NUM_SPECIALS + self.num_symbols + 1

    def state(self) -> dict:
        return {**super().state(), "grid_op": self.op}

    def symbol_text(self, symbol):
        return "/" if symbol == self.sep else str(symbol)

    # ---- grids <-> symbols
    def rows(self, symbols: list[int]) -> list[list[int]]:
        """Symbols -> the list of rows (split at separators; ragged rows are kept as they are)."""
        out = [[]]
        for s in symbols:
            if s == self.sep:
                out.append([])
            else:
                out[-1].append(s)
        return out

    def flatten(self, grid: list[list[int]]) -> list[int]:
        """Rows -> symbols, a separator between consecutive rows."""
        out = []
        for r, row in enumerate(grid):
            out += ([self.sep] if r else []) + list(row)
        return out

    def shape(self, source: list[int]) -> tuple[int, int]:
        """(H, W) of a grid's symbols; ValueError if it is not a rectangle of at least 1x1."""
        widths = [len(row) for row in self.rows(source)]
        if len(set(widths)) != 1 or not widths[0]:
            raise ValueError(f"not a rectangular grid: row lengths {widths}")
        return len(widths), widths[0]

    def side(self, source: list[int]) -> int:
        """The length of a source as training counts it: the longer side of its grid."""
        return max(self.shape(source))

    # ---- the op
    def output_shape(self, h: int, w: int) -> tuple[int, int]:
        """(H', W') of the target of an HxW grid."""
        return (w, h) if self.op in ("rotate", "transpose") else (h, w)

    def transform(self, grid: list[list[int]]) -> list[list[int]]:
        """The target grid of a (rectangular) source grid."""
        h, w = len(grid), len(grid[0])
        if self.op == "rotate":
            return [[grid[h - 1 - c][r] for c in range(h)] for r in range(w)]
        if self.op == "transpose":
            return [[grid[c][r] for c in range(h)] for r in range(w)]
        if self.op == "flip":
            return [row[::-1] for row in grid]
        columns = []  # gravity
        for c in range(w):
            coloured = [grid[r][c] for r in range(h) if grid[r][c]]
            columns.append([0] * (h - len(coloured)) + coloured)
        return [[columns[c][r] for c in range(w)] for r in range(h)]

    # ---- sampling
    def grid(self, h: int, w: int, g: torch.Generator) -> list[list[int]]:
        """A random HxW grid: each cell background with probability 1/2, else a uniform colour."""
        empty = torch.randint(2, (h, w), generator=g)
        colour = torch.randint(1, self.num_symbols, (h, w), generator=g)
        return torch.where(empty.bool(), 0, colour).tolist()

    def grid_pair(self, h: int, w: int, g: torch.Generator) -> tuple[list[int], list[int]]:
        """One example with an HxW source grid, as symbol lists."""
        grid = self.grid(h, w, g)
        return self.flatten(grid), self.flatten(self.transform(grid))

    def pair(self, length, g):
        """An example whose longer side is length (side() == length): the other side is uniform in
        [1, length], and which of H and W is the longer is a coin flip (like add's operands)."""
        other = int(torch.randint(1, length + 1, (1,), generator=g))
        h, w = (length, other) if int(torch.randint(2, (1,), generator=g)) else (other, length)
        return self.grid_pair(h, w, g)

    def examples(self, n, min_len, max_len, g):
        """n pairs whose grids have H and W each uniform in [min_len, max_len], independently."""
        if min_len < 1:
            raise ValueError(f"grid sides must be at least 1, not {min_len}")
        sides = torch.randint(min_len, max_len + 1, (n, 2), generator=g).tolist()
        out = []
        for h, w in sides:
            src, tgt = self.grid_pair(h, w, g)
            out.append((self.to_ids(src), self.to_ids(tgt)))
        return out

    def max_lengths(self, length):
        """Token counts of the largest grid with sides <= length (LxL), and of its target."""
        return length * length + length - 1, length * length + length

    def target_slots(self, source):
        h, w = self.output_shape(*self.shape(source))
        return h * (w + 1)  # cells, h - 1 separators, EOS

    # ---- 2D positions
    @staticmethod
    def _layout(h: int, w: int) -> list[tuple[int, int]]:
        """(row, col) of the h * (w + 1) tokens of an HxW grid whose every row is ended (at col w)."""
        return [(r, c) for r in range(h) for c in range(w + 1)]

    def source_coords(self, source: list[int]) -> list[tuple[int, int]]:
        """(row, col) of every source symbol; the separator ending row r is at (r, W)."""
        return self._layout(*self.shape(source))[:-1]

    def target_coords(self, source: list[int]) -> list[tuple[int, int]]:
        """For each of the target_slots(source) decoder inputs, the (row, col) in the output grid
        (H'xW') of the token it predicts: cells, the separator after row r at (r, W'), and the final
        EOS at (H'-1, W'). So the first (BOS, predicting cell (0, 0)) is (0, 0)."""
        return self._layout(*self.output_shape(*self.shape(source)))

    # ---- text <-> symbols
    def parse(self, text):
        form = f"rows of digits 0..{self.num_symbols - 1} separated by '/', e.g. '010/110'"
        rows = re.sub(r"\s+", "", text).split("/")
        digits = "0123456789"[:self.num_symbols]
        bad = sorted({ch for row in rows for ch in row if ch not in digits})
        if bad:
            raise ValueError(f"input {text!r} must be {form}; not colours: {' '.join(bad)}")
        widths = [len(row) for row in rows]
        if len(set(widths)) != 1 or not widths[0]:
            raise ValueError(f"input {text!r} must be {form}: a rectangle of at least 1x1, all rows the same length; "
                             f"row lengths: {', '.join(map(str, widths))}")
        return self.flatten([[int(ch) for ch in row] for row in rows])

    def render(self, symbols):
        """Symbols -> rows of digits joined by "/" (a ragged model output is shown as it is)."""
        return "/".join("".join(str(s) for s in row) for row in self.rows(symbols))


TASKS = {t.name: t for t in (CopyTask, ReverseTask, SortTask, AddTask, GridTask)}


def make_task(name: str, num_symbols: int, max_len: int = 0, grid_op: str = "rotate") -> Task:
    """Build a task by name; raises ValueError listing the valid names.

    max_len: the longest length the task will be asked for (add pads its numbers to it).
    grid_op: what grid does to its grid, one of GRID_OPS (the other tasks ignore it).
    """
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of: lm, {', '.join(TASKS)}")
    if name == "add":
        if not 2 <= num_symbols <= 10:
            raise ValueError(f"num_symbols {num_symbols} is not allowed for task 'add'; it is the number base, 2..10")
        return AddTask(num_symbols, max_len)
    if name == "grid":
        return GridTask(num_symbols, grid_op)
    return TASKS[name](num_symbols)


def task_from_state(state: dict) -> Task:
    return make_task(state["task"], state["num_symbols"], state.get("width", 0), state.get("grid_op", "rotate"))
