"""Text -> sentences, by rule and without dependencies, streamed line by line in bounded memory.

``split_sentences(text)`` splits a whole text. ``SentenceSplitter`` (``feed`` one line at a time,
``close`` at the end) and ``iter_sentences(lines)`` give the same sentences while holding only the
sentence in progress: ``split_sentences(text) == list(iter_sentences(text.splitlines(keepends=True)))``.
A line is one string fed, its line break (if any) dropped; a string holding several line breaks
counts as the lines ``str.splitlines`` makes of it, so ``""`` and ``"\\n"`` are both a blank line.

Rules:

1. Ends. A sentence ends at ``.``, ``?`` or ``!`` (or a run of them: ``?!``, ``!!!``) followed by
   whitespace or the end of the text. Closing quotes and brackets right after the punctuation
   (``"`` ``'`` ``”`` ``’`` ``)`` ``]``) belong to the sentence they close:
   ``He said "Go." Then ...`` -> ``He said "Go."`` | ``Then ...``. A ``?`` or ``!`` before
   whitespace always ends one, also before a lowercase word (``"Really?" he asked.`` is two).
2. Abbreviations. A ``.`` after one of these words does not end a sentence:

   - never: titles, spelled as here (Mr Mrs Ms Dr St Prof Sr Jr Rev Gen Capt Col Lt Sgt Mt), the
     Latin and other short forms e.g. i.e. vs. cf. viz. approx. (in any case), and a single capital
     letter other than "I" (initials: "J. R. R. Tolkien"; "Not I. Go." still ends after "I.");
   - only before a capital letter: etc. and al. (any case) and dotted initialisms such as U.S.,
     a.m., p.m.: "pears, etc. Then" ends after "etc.", "etc. and so" does not;
   - not before a number: No. Nos. Fig. Figs. Vol. p. pp. Eq. (any case): "No. 5" and "Fig. (3)"
     go on; otherwise they end as any word does, so "No. I will not." ends after "No.".

   "The next word starts with a capital (or a digit)" looks past opening quotes and brackets.
3. Inside a word. Punctuation not followed by whitespace never ends a sentence: ``3.14``, ``v1.2``,
   ``1.5x``, ``www.python.org``, ``a.b``, ``Yes!no``.
4. Ellipses. ``...`` or ``…`` ends a sentence only when the next word starts with a capital letter;
   before a lowercase word, a digit or punctuation it does not.
5. Lines. A blank line (a paragraph break) always ends a sentence. A speaker heading -- a line that
   is only 1 to 4 words, each starting with a capital letter, then a colon (``ROMEO:``,
   ``First Citizen:``, ``KING HENRY VI:``) -- ends a sentence and is dropped, and so is a line of
   punctuation alone, with no letter or digit (an underline such as ``*****``). A line that starts
   with an uppercase letter ends the sentence before it, with or without punctuation (verse: each
   verse line is capitalised); a line that starts otherwise (lowercase, digit, punctuation, a
   quote) continues it (wrapped prose). Limits: wrapped prose whose next line starts with a capital
   ("written in" / "Python ...", "Mr." / "Smith") is split at that line break; a line that is only
   "Note:" (prose) or "Come:" (inside a speech) is dropped as a heading; a verse line starting with
   a quote or ``'Tis`` continues the line before.
6. Length. With ``max_chars``, a sentence longer than that is cut after secondary boundaries, tried
   in this order: ``;``, then ``:``, then ``,`` and dashes. ``;`` ``:`` ``,`` (with any closing
   quotes or brackets right after them) count only before a space, `` -- `` only between spaces,
   ``—`` anywhere but at the end. At each level the cuts are greedy -- each piece ends at the last
   boundary that keeps it within ``max_chars``, or at the first one when none does -- and the
   pieces still too long are cut at the next level. Only a piece with no boundary left in it stays
   longer than ``max_chars``.
7. Whitespace. In every sentence each run of whitespace (line breaks, tabs, NBSP ...) is one space,
   with none at either end; no sentence is empty.
8. Memory. Only the text since the last sentence is held. When it grows past a bound (64 *
   ``max_chars``, or 100,000 characters without ``max_chars``) -- a paragraph with no boundary --
   it is emitted anyway, in pieces of at most the bound cut at spaces (inside a word only when one
   word is longer than the bound); what is left is kept for the next line.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

_CLOSERS = "\"'”’)]"
_OPENERS = "\"'“‘(["
_LAST_CHARS = frozenset(".?!…" + _CLOSERS)  # what a word that ends a sentence can end with
_TITLES = frozenset("Mr Mrs Ms Dr St Prof Sr Jr Rev Gen Capt Col Lt Sgt Mt".split())
_NEVER_ENDS = frozenset("e.g i.e vs cf viz approx".split())
_ENDS_BEFORE_CAPITAL = frozenset("etc al".split())
_BEFORE_NUMBER = frozenset("no nos fig figs vol p pp eq".split())
_INITIALISM = re.compile(r"(?:[A-Za-z]\.)+[A-Za-z]")  # the word before the last dot of U.S., a.m.
_HEADING_WORD = re.compile(r"[\w'’-]+")
# rule 6's levels; a cut goes at a match's end (a space, or any character after an em dash, follows)
_SECONDARY = (
    re.compile(r";[\"'”’)\]]*(?= )"),
    re.compile(r":[\"'”’)\]]*(?= )"),
    re.compile(r",[\"'”’)\]]*(?= )|(?<= )--(?= )|—(?=.)"),
)
_BOUND = 100_000  # characters held at most without max_chars (rule 8)


def normalise_space(text: str) -> str:
    """``text`` with each run of whitespace (line breaks, tabs, NBSP ...) as one space, ends stripped."""
    return " ".join(text.split())


def split_sentences(text: str, max_chars: int | None = None) -> list[str]:
    """The sentences of a whole text (the module docstring's rules)."""
    return list(iter_sentences(text.splitlines(keepends=True), max_chars))


def iter_sentences(lines: Iterable[str], max_chars: int | None = None) -> Iterator[str]:
    """The sentences of ``lines`` (a text file, say), as each is completed."""
    splitter = SentenceSplitter(max_chars)
    for line in lines:
        yield from splitter.feed(line)
    yield from splitter.close()


class SentenceSplitter:
    """Streaming: feed lines (each str line as read from a text file, with or without its trailing
    "\\n"), get completed sentences back."""

    def __init__(self, max_chars: int | None = None):
        if max_chars is not None and max_chars < 1:
            raise ValueError(f"max_chars must be a positive int or None, got {max_chars!r}")
        self.max_chars = max_chars
        self._bound = 64 * max_chars if max_chars else _BOUND
        self._words: list[str] = []  # the text since the last sentence
        self._chars = 0  # sum of len(word) + 1 over self._words
        self._checked = 0  # the words before this index do not end a sentence

    def feed(self, line: str) -> list[str]:
        """The sentences completed by this line (may be empty)."""
        out: list[str] = []
        for part in line.splitlines() or [""]:
            out.extend(self._line(part))
        return out

    def close(self) -> list[str]:
        """Whatever is still held, as sentences; the splitter is then empty, ready for another text."""
        return self._finish()

    def _line(self, line: str) -> list[str]:
        words = line.split()
        if not words or _is_heading(words) or not any(c.isalnum() for c in line):
            return self._finish()  # a blank line, a heading, or a rule of punctuation ("*****", "-----")
        out = self._finish() if words[0][0].isupper() else []
        self._words.extend(words)
        self._chars += sum(map(len, words)) + len(words)
        out.extend(self._complete())
        if self._chars - 1 > self._bound:
            out.extend(self._overflow())
        return out

    def _complete(self) -> list[str]:
        """The sentences that end before the last word held (that one waits for the next word)."""
        words, out, start = self._words, [], 0
        for i in range(self._checked, len(words) - 1):
            if _ends(words[i], words[i + 1]):
                out.extend(self._pieces(" ".join(words[start:i + 1])))
                start = i + 1
        if start:
            self._chars -= sum(map(len, words[:start])) + start
            del words[:start]
        self._checked = max(len(words) - 1, 0)
        return out

    def _finish(self) -> list[str]:
        """Everything held, as sentences: its last word ends one."""
        out = self._complete()
        if self._words:
            out.extend(self._pieces(" ".join(self._words)))
        self._words, self._chars, self._checked = [], 0, 0
        return out

    def _overflow(self) -> list[str]:
        """Pieces of at most the bound, cut at spaces, while more than the bound is held (rule 8)."""
        text, out = " ".join(self._words), []
        while len(text) > self._bound:
            cut = text.rfind(" ", 0, self._bound + 1)
            if cut < 0:  # one word longer than the bound: cut inside it
                out.extend(self._pieces(text[:self._bound]))
                text = text[self._bound:]
            else:
                out.extend(self._pieces(text[:cut]))
                text = text[cut + 1:]
        self._words = text.split()
        self._chars = len(text) + 1
        self._checked = max(len(self._words) - 1, 0)
        return out

    def _pieces(self, sentence: str) -> list[str]:
        return _limit(sentence, self.max_chars) if self.max_chars else [sentence]


def _is_heading(words: list[str]) -> bool:
    """Whether a line of these words is a speaker heading (rule 5)."""
    if len(words) > 4 or not words[-1].endswith(":"):
        return False
    names = words[:-1] + [words[-1][:-1]]
    return all(w[:1].isupper() and _HEADING_WORD.fullmatch(w) for w in names)


def _capitalised(word: str) -> bool:
    return word.lstrip(_OPENERS)[:1].isupper()


def _ends(word: str, following: str) -> bool:
    """Whether a sentence ends after ``word`` when ``following`` is the next word (rules 1-4)."""
    if word[-1] not in _LAST_CHARS:
        return False
    core = word.rstrip(_CLOSERS)
    if core.endswith(("...", "…")):
        return _capitalised(following)
    if core.endswith(("?", "!")):
        return True
    if not core.endswith("."):
        return False
    stem = core[:-1].lstrip(_OPENERS)
    lower = stem.lower()
    if stem in _TITLES or lower in _NEVER_ENDS or (len(stem) == 1 and stem.isupper() and stem != "I"):
        return False
    if lower in _ENDS_BEFORE_CAPITAL or _INITIALISM.fullmatch(stem):
        return _capitalised(following)
    if lower in _BEFORE_NUMBER:
        return not following.lstrip(_OPENERS)[:1].isdigit()
    return True


def _limit(sentence: str, max_chars: int, level: int = 0) -> list[str]:
    """``sentence`` cut into pieces of at most ``max_chars`` where boundaries allow (rule 6)."""
    if len(sentence) <= max_chars or level == len(_SECONDARY):
        return [sentence]
    cuts = [m.end() for m in _SECONDARY[level].finditer(sentence)]
    return [p for piece in _greedy(sentence, cuts, max_chars) for p in _limit(piece, max_chars, level + 1)]


def _greedy(text: str, cuts: list[int], max_chars: int) -> list[str]:
    """``text`` cut at some of ``cuts`` (ascending): each piece ends at the last cut that keeps it within
    ``max_chars``, or at the first one when none does; the space after a cut is dropped."""
    pieces, start, i = [], 0, 0
    while len(text) - start > max_chars and i < len(cuts):
        end = cuts[i]
        i += 1
        while i < len(cuts) and cuts[i] - start <= max_chars:
            end = cuts[i]
            i += 1
        pieces.append(text[start:end])
        start = end + 1 if text[end] == " " else end
    pieces.append(text[start:])
    return pieces
