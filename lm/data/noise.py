"""A seeded noise model for task spell: keyboard typos and real human misspellings.

NoiseModel.corrupt(sentence, rng) turns a clean sentence into a noisy one, drawing only from the rng it is
given (same sentence and rng state -> same Corruption). Two kinds of noise, in this order:

1. Human misspellings (misspelling_rate > 0): a word (a maximal run of letters, str.isalpha()) whose
   lowercase form is a key of ``misspellings`` is replaced, with probability misspelling_rate, by one of
   its misspellings chosen uniformly, in the word's case pattern (ALLCAPS, Capitalised or as written).
   load_misspellings() reads such a table from the codespell package.
2. Character edits (typos). With ``edits`` > 0, exactly that many per sentence, at distinct letters (more
   rounds when the sentence has fewer letters than edits); fewer only for a sentence without letters.
   Otherwise each letter starts an edit with probability ``rate`` (expected edits = rate * letters),
   drawn as geometric gaps between edited letters (one rng call per edit, not one per letter). An edit is
   one of EDITS, chosen uniformly, at a letter:
     insert      a keyboard neighbour of the letter (KEYBOARD), or half the time a copy of it (a doubled
                 letter), right after it; a letter without neighbours (not a-z) is always copied
     delete      the letter, only when its word has 2 letters or more
     substitute  the letter by a keyboard neighbour, only for a letter with neighbours (a-z, A-Z)
     transpose   the letter and the next one, only when that is a letter of the same word and a different
                 one; each position keeps its case ("The" -> "Hte", as the Shift key would)
   A kind that is not allowed at that letter is replaced by one drawn uniformly among those that are
   (insert always is). The positions are chosen on the sentence and the edits applied right to left, so
   each edit finds its letter where it was chosen. Case is kept: a neighbour of an uppercase letter is
   uppercase.

Only letters are ever edited, inserted or removed, and no word loses its last letter: spaces, digits and
punctuation stay exactly as they were, in order, and ``len(noisy.split()) == len(clean.split())`` always,
so noisy words align one to one with clean words.
"""

from __future__ import annotations

import functools
import importlib.resources
import itertools
import math
import random
import re
from dataclasses import dataclass

EDITS = ("insert", "delete", "substitute", "transpose")
_ROWS = ("qwertyuiop", "asdfghjkl", "zxcvbnm")  # a US QWERTY keyboard's letter rows


def _keyboard(rows: tuple[str, ...]) -> dict[str, str]:
    """Each key -> the keys touching it: columns c-1..c+1 of its own row and of the rows above and below."""
    near = {}
    for r, row in enumerate(rows):
        for c, key in enumerate(row):
            keys = "".join(rows[rr][max(c - 1, 0):c + 2] for rr in (r - 1, r, r + 1) if 0 <= rr < len(rows))
            near[key] = keys.replace(key, "")
    return dict(sorted(near.items()))


KEYBOARD: dict[str, str] = _keyboard(_ROWS)  # e.g. KEYBOARD["s"] == "qweadzxc"

_WORD = re.compile(r"[a-z]+")


@functools.cache
def load_misspellings() -> dict[str, list[str]]:
    """Correct word (lowercase) -> real human misspellings of it, from codespell's dictionary.

    Read at run time from codespell_lib/data/dictionary.txt inside the installed ``codespell`` package (lines
    ``misspelling->correction`` or ``misspelling->fix1, fix2,[ reason]``). Kept: lines with exactly one
    correction, both sides lowercase letters a-z only, misspelling != correction. Cached: every call returns
    the same dict (do not change it).

    Licence: codespell's dictionary files are CC BY-SA 3.0 (derived from Wikipedia's list of common
    misspellings) and its code GPL-2.0. This reads the installed data at run time only; none of it is copied
    into this repository.
    """
    try:
        path = importlib.resources.files("codespell_lib") / "data" / "dictionary.txt"
        text = path.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise ValueError(f"misspellings need the codespell package (pip install codespell==2.4.3, it is in "
                         f"requirements.txt): {e}; noise runs without it with misspellings: none") from None
    table: dict[str, list[str]] = {}
    for line in text.splitlines():
        wrong, arrow, fixes = line.partition("->")
        if not arrow:
            continue
        fixes = fixes.strip()
        if "," in fixes:  # "fix1, fix2," or "fix1, fix2, reason": the fixes stand before the last comma
            fixes = fixes[:fixes.rindex(",")]
        corrections = [f.strip() for f in fixes.split(",")]
        wrong = wrong.strip()
        if len(corrections) != 1:
            continue
        right = corrections[0]
        if right != wrong and _WORD.fullmatch(wrong) and _WORD.fullmatch(right):
            misspelt = table.setdefault(right, [])
            if wrong not in misspelt:
                misspelt.append(wrong)
    return table


@dataclass(frozen=True)
class Corruption:
    noisy: str  # the corrupted sentence
    edits: int  # character edits applied (insert, delete, substitute, transpose)
    misspelled: int  # words replaced by a human misspelling


def _case_like(word: str, model: str) -> str:
    """word in model's case pattern: ALLCAPS -> upper, Capitalised -> capitalised, else word as it is."""
    if len(model) > 1 and model.isupper():
        return word.upper()
    if model[:1].isupper():
        return word.capitalize()
    return word


def _cased(ch: str, like: str) -> str:
    """ch in the case of the letter like (upper when like is uppercase), when that is still one character."""
    out = ch.upper() if like.isupper() else ch.lower()
    return out if len(out) == 1 else ch


class NoiseModel:
    """Typos at ``rate`` per letter (or exactly ``edits`` per sentence) and human misspellings; see the module
    docstring for the rules."""

    def __init__(self, rate: float = 0.05, edits: int = 0, misspelling_rate: float = 0.0,
                 misspellings: dict[str, list[str]] | None = None):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 <= rate <= 1.0:
            raise ValueError(f"noise rate {rate!r} must be a number in [0, 1] (the chance a letter starts an edit)")
        if isinstance(edits, bool) or not isinstance(edits, int) or edits < 0:
            raise ValueError(f"noise edits {edits!r} must be an integer >= 0 (edits per sentence; 0: use rate)")
        if (isinstance(misspelling_rate, bool) or not isinstance(misspelling_rate, (int, float))
                or not 0.0 <= misspelling_rate <= 1.0):
            raise ValueError(f"misspelling_rate {misspelling_rate!r} must be a number in [0, 1] (the chance a "
                             f"word with known misspellings is replaced by one)")
        if misspellings is None and misspelling_rate > 0:
            raise ValueError(f"misspelling_rate {misspelling_rate!r} needs a misspellings table (e.g. "
                             f"load_misspellings()); with misspellings None it must be 0")
        for word, wrong in (misspellings or {}).items():
            if not (isinstance(word, str) and word.isalpha() and word == word.lower()):
                raise ValueError(f"misspellings key {word!r} must be a lowercase word of letters only")
            bad = [w for w in wrong if not (isinstance(w, str) and w.isalpha())]
            if bad:
                raise ValueError(f"misspellings of {word!r} must be words of letters only, not {bad[0]!r} "
                                 f"(a space or other character would change the word count)")
        self.rate, self.edits, self.misspelling_rate = float(rate), edits, float(misspelling_rate)
        self.misspellings = misspellings or {}
        self._log_keep = math.log1p(-self.rate) if 0.0 < self.rate < 1.0 else 0.0  # log(1 - rate)

    def corrupt(self, sentence: str, rng: random.Random) -> Corruption:
        """The sentence with misspellings, then character edits, drawn from rng only."""
        misspelled = 0
        if self.misspelling_rate > 0 and self.misspellings:
            sentence, misspelled = self._misspell(sentence, rng)
        chars = list(sentence)
        letters = [i for i, c in enumerate(chars) if c.isalpha()]
        done = 0
        if self.edits > 0:
            while done < self.edits and letters:  # rounds of distinct letters: more than one only when short
                chosen = sorted(rng.sample(letters, min(self.edits - done, len(letters))))
                for p in reversed(chosen):
                    self._edit(chars, p, rng)
                done += len(chosen)
                if done < self.edits:
                    letters = [i for i, c in enumerate(chars) if c.isalpha()]
        else:
            chosen = self._rate_positions(len(letters), rng)
            for k in reversed(chosen):
                self._edit(chars, letters[k], rng)
            done = len(chosen)
        return Corruption("".join(chars), done, misspelled)

    def _rate_positions(self, n: int, rng: random.Random) -> list[int]:
        """Indices in 0..n-1, each kept with probability rate: gaps between kept ones are geometric,
        gap = floor(log(u) / log(1 - rate)) with u uniform in (0, 1], P(gap = g) = (1 - rate)^g * rate."""
        if self.rate == 0.0 or n == 0:
            return []
        if self.rate == 1.0:
            return list(range(n))
        out, i = [], -1
        while True:
            i += 1 + int(min(math.log(1.0 - rng.random()) / self._log_keep, n))
            if i >= n:
                return out
            out.append(i)

    def _misspell(self, sentence: str, rng: random.Random) -> tuple[str, int]:
        """Each word with known misspellings replaced by one with probability misspelling_rate."""
        parts, count = [], 0
        for is_letter, run in itertools.groupby(sentence, str.isalpha):
            word = "".join(run)
            options = self.misspellings.get(word.lower()) if is_letter else None
            if options and rng.random() < self.misspelling_rate:
                word = _case_like(options[rng.randrange(len(options))], word)
                count += 1
            parts.append(word)
        return "".join(parts), count

    def _edit(self, chars: list[str], p: int, rng: random.Random) -> None:
        """One edit at the letter chars[p], in place."""
        c = chars[p]
        near = KEYBOARD.get(c.lower(), "")
        nxt = chars[p + 1] if p + 1 < len(chars) else ""
        allowed = {
            "insert": True,
            "delete": nxt.isalpha() or (p > 0 and chars[p - 1].isalpha()),  # the word keeps a letter
            "substitute": bool(near),
            "transpose": nxt.isalpha() and nxt.lower() != c.lower(),
        }
        kind = EDITS[rng.randrange(len(EDITS))]
        if not allowed[kind]:
            legal = [k for k in EDITS if allowed[k]]
            kind = legal[rng.randrange(len(legal))]
        if kind == "insert":
            new = _cased(near[rng.randrange(len(near))], c) if near and rng.random() < 0.5 else c
            chars.insert(p + 1, new)
        elif kind == "delete":
            del chars[p]
        elif kind == "substitute":
            chars[p] = _cased(near[rng.randrange(len(near))], c)
        else:
            chars[p], chars[p + 1] = _cased(nxt, c), _cased(c, nxt)
