"""Scores for task spell (character error rate, exact match, word accuracy) and the classic baseline.

Word accuracy is split in two: on the words the noise corrupted (did the model repair them?) and on the
words it left alone (did the model keep them?). DictionaryCorrector is the frequency-based corrector of the
textbooks (Norvig's essay "How to Write a Spelling Corrector"): the baseline a model has to beat.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from dataclasses import dataclass
from typing import Container, Iterable, Mapping, Sequence


def edit_distance(a: Sequence, b: Sequence) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions (cost 1 each) turning a into b.
    D[i][j] = min(D[i-1][j] + 1, D[i][j-1] + 1, D[i-1][j-1] + (a[i-1] != b[j-1])), two rows kept."""
    if len(a) < len(b):
        a, b = b, a  # the row runs over the shorter one
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        row = [i]
        for j, y in enumerate(b, 1):
            row.append(min(prev[j] + 1, row[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = row
    return prev[-1]


def _check_pairs(outputs: Sequence, targets: Sequence) -> None:
    if len(outputs) != len(targets):
        raise ValueError(f"{len(outputs)} outputs for {len(targets)} targets: give one output per target")
    if not targets:
        raise ValueError("no targets: a score needs at least one (output, target) pair")


def cer(outputs: Sequence[str], targets: Sequence[str]) -> float:
    """Corpus character error rate: sum(edit_distance(o, t)) / sum(len(t))."""
    _check_pairs(outputs, targets)
    chars = sum(len(t) for t in targets)
    if chars == 0:
        raise ValueError("the targets have no characters: the character error rate is undefined")
    return sum(edit_distance(o, t) for o, t in zip(outputs, targets)) / chars


def exact_match(outputs: Sequence[str], targets: Sequence[str]) -> float:
    """Share of outputs equal to their target."""
    _check_pairs(outputs, targets)
    return sum(o == t for o, t in zip(outputs, targets)) / len(targets)


def align_words(ref: list[str], hyp: list[str]) -> list[int | None]:
    """For each ref word, the index of the hyp word it is paired with by a minimum edit-distance alignment
    of the two word lists (a match or substitution pairs ref i with hyp j), or None for a deleted ref word.

    Ties: the backtrace from the end takes a diagonal step (match or substitution) when it is optimal, else
    a deletion of the ref word, else an insertion of the hyp word; so of equal-cost alignments, the one
    pairing the later words is kept (ref "a b", hyp "ab": b -> 0, a -> None).
    """
    n, m = len(ref), len(hyp)
    D = [[0] * (m + 1) for _ in range(n + 1)]  # D[i][j] = distance between ref[:i] and hyp[:j]
    for i in range(n + 1):
        D[i][0] = i
    for j in range(m + 1):
        D[0][j] = j
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            D[i][j] = min(D[i - 1][j] + 1, D[i][j - 1] + 1, D[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]))
    out: list[int | None] = [None] * n
    i, j = n, m
    while i > 0:
        if j > 0 and D[i][j] == D[i - 1][j - 1] + (ref[i - 1] != hyp[j - 1]):
            out[i - 1] = j - 1
            i, j = i - 1, j - 1
        elif D[i][j] == D[i - 1][j] + 1:
            i -= 1  # ref word i - 1 deleted
        else:
            j -= 1  # hyp word j - 1 inserted
    return out


@dataclass
class WordAccuracy:
    """Word counts: the clean words the noise corrupted and those it left untouched, and how many of each the
    output has right."""

    corrupted_right: int = 0
    corrupted_total: int = 0
    untouched_right: int = 0
    untouched_total: int = 0

    @property
    def corrupted(self) -> float:
        """corrupted_right / corrupted_total (nan without corrupted words)."""
        return self.corrupted_right / self.corrupted_total if self.corrupted_total else math.nan

    @property
    def untouched(self) -> float:
        """untouched_right / untouched_total (nan without untouched words)."""
        return self.untouched_right / self.untouched_total if self.untouched_total else math.nan

    def __add__(self, other: WordAccuracy) -> WordAccuracy:
        return WordAccuracy(self.corrupted_right + other.corrupted_right,
                            self.corrupted_total + other.corrupted_total,
                            self.untouched_right + other.untouched_right,
                            self.untouched_total + other.untouched_total)


def word_accuracy(clean: str, noisy: str, output: str) -> WordAccuracy:
    """Word accuracy of one output, words = str.split().

    Clean word i is corrupted when noisy word i differs from it (the noise model keeps the word count; when
    the counts differ, align_words(clean, noisy) pairs them, and a clean word is corrupted unless paired with
    an equal noisy word). It is right when align_words(clean, output) pairs it with an equal output word.
    """
    cw, nw, ow = clean.split(), noisy.split(), output.split()
    if len(nw) == len(cw):
        corrupted = [n != c for n, c in zip(nw, cw)]
    else:
        to_noisy = align_words(cw, nw)
        corrupted = [j is None or nw[j] != c for j, c in zip(to_noisy, cw)]
    right = [j is not None and ow[j] == c for j, c in zip(align_words(cw, ow), cw)]
    acc = WordAccuracy()
    for bad, ok in zip(corrupted, right):
        if bad:
            acc.corrupted_total += 1
            acc.corrupted_right += ok
        else:
            acc.untouched_total += 1
            acc.untouched_right += ok
    return acc


def spelling_scores(outputs: list[str], targets: list[str], noisy: list[str]) -> dict[str, float]:
    """Over a set: exact match, CER, and word accuracy on corrupted and on untouched words (nan when none)."""
    if len(noisy) != len(targets):
        raise ValueError(f"{len(noisy)} noisy sentences for {len(targets)} targets: give one per target")
    acc = WordAccuracy()
    for o, t, n in zip(outputs, targets, noisy):
        acc += word_accuracy(t, n, o)
    return {"exact": exact_match(outputs, targets), "cer": cer(outputs, targets),
            "word_acc_corrupted": acc.corrupted, "word_acc_untouched": acc.untouched}


def _words(sentence: str) -> list[tuple[bool, str]]:
    """The sentence as runs: (True, a maximal run of letters) or (False, the characters between them)."""
    return [(is_letter, "".join(run)) for is_letter, run in itertools.groupby(sentence, str.isalpha)]


class DictionaryCorrector:
    """The classic frequency-based corrector: for each word not in the vocabulary, the most frequent known word
    within edit distance 1, else within 2 (among all candidates at the smallest distance, the most frequent;
    ties -> alphabetical first), else the word unchanged. Known words are never changed.

    An edit here is a deletion, a transposition of adjacent letters, a substitution or an insertion (so a
    transposition counts 1, unlike edit_distance), over the letters of the vocabulary's words. Distance 2
    looks up the known words one edit from each word one edit from the query, through two indexes of the
    vocabulary (its one-letter deletions, and its words with one letter masked) instead of generating every
    insertion and substitution twice. Corrections are cached per word.
    """

    def __init__(self, counts: Mapping[str, int]):
        """counts: word -> frequency (> 0); words are letters only, lowercased here (counts of one
        lowercase form summed)."""
        self.counts: dict[str, int] = {}
        for word, n in counts.items():
            if not (isinstance(word, str) and word.isalpha()):
                raise ValueError(f"vocabulary word {word!r} must be a non-empty run of letters")
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                raise ValueError(f"count {n!r} of {word!r} must be an integer > 0")
            self.counts[word.lower()] = self.counts.get(word.lower(), 0) + n
        self.letters = "".join(sorted(set("abcdefghijklmnopqrstuvwxyz").union(*self.counts)))
        self._by_deletion: dict[str, set[str]] = {}  # w[:i] + w[i+1:] -> the words w
        self._by_mask: dict[str, set[str]] = {}  # w[:i] + "\0" + w[i+1:] -> the words w
        for w in self.counts:
            for i in range(len(w)):
                self._by_deletion.setdefault(w[:i] + w[i + 1:], set()).add(w)
                self._by_mask.setdefault(w[:i] + "\0" + w[i + 1:], set()).add(w)
        self._cache: dict[str, str] = {}

    @classmethod
    def from_sentences(cls, sentences: Iterable[str]) -> DictionaryCorrector:
        """The vocabulary of some (training) sentences: their runs of letters, lowercased, counted (so an
        apostrophe splits a word: "don't" counts "don" and "t")."""
        counts: Counter[str] = Counter()
        for s in sentences:
            counts.update(w.lower() for is_letter, w in _words(s) if is_letter)
        return cls(counts)

    def edits1(self, word: str) -> set[str]:
        """Every string one deletion, transposition, substitution or insertion (of self.letters) from word."""
        splits = [(word[:i], word[i:]) for i in range(len(word) + 1)]
        return ({a + b[1:] for a, b in splits if b}
                | {a + b[1] + b[0] + b[2:] for a, b in splits if len(b) > 1}
                | {a + c + b[1:] for a, b in splits if b for c in self.letters}
                | {a + c + b for a, b in splits for c in self.letters})

    def known_edits1(self, word: str) -> set[str]:
        """The known words one edit from word (as edits1(word) & vocabulary, without generating all of it):
        deletions and transpositions looked up, insertions and substitutions through the indexes."""
        found = set(self._by_deletion.get(word, ()))  # words with one letter more: insertions into word
        for i in range(len(word)):
            for w in (word[:i] + word[i + 1:], word[:i] + word[i + 1:i + 2] + word[i] + word[i + 2:]):
                if w in self.counts:
                    found.add(w)
            found |= self._by_mask.get(word[:i] + "\0" + word[i + 1:], set())
        found.discard(word)
        return found

    def _best(self, candidates: set[str]) -> str:
        return min(candidates, key=lambda w: (-self.counts[w], w))  # most frequent, then alphabetical

    def _correct_lower(self, word: str) -> str:
        if word in self.counts:
            return word
        if word not in self._cache:
            near = self.known_edits1(word)
            if not near:
                near = set().union(*(self.known_edits1(e) for e in self.edits1(word)))
            self._cache[word] = self._best(near) if near else word
        return self._cache[word]

    def correct_word(self, word: str) -> str:
        """The correction of one word, in its case pattern (ALLCAPS, Capitalised, or lowercase)."""
        if not word:
            return word
        fixed = self._correct_lower(word.lower())
        if fixed == word.lower():
            return word  # known or without a candidate: unchanged, whatever its case
        if len(word) > 1 and word.isupper():
            return fixed.upper()
        return fixed.capitalize() if word[0].isupper() else fixed

    def correct(self, sentence: str) -> str:
        """Each run of letters corrected in place; spaces, punctuation and digits kept exactly."""
        return "".join(self.correct_word(w) if is_letter else w for is_letter, w in _words(sentence))


def known_words_of(sentences: Iterable[str], limit: int = 200_000) -> list[str]:
    """The lowercase words (runs of letters) of some (training) sentences, the most frequent first (at most
    limit of them, so a huge corpus still gives a list a checkpoint can hold), ties alphabetical."""
    counts: Counter[str] = Counter()
    for s in sentences:
        counts.update(w.lower() for is_letter, w in _words(s) if is_letter)
    return [w for w, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]]


def keep_known_changes(source: str, output: str, known: Container[str]) -> str:
    """The known-word filter: a corrector's output, with every word it changed into something that is not
    a word of the vocabulary put back as the source had it.

    Words are whitespace-separated; output word j is compared with the source word that align_words pairs
    it with. A changed word is kept when each of its runs of letters, lowercased, is in known (so
    "villain," and "o'er" pass when "villain", "o" and "er" are known); otherwise the source's word takes
    its place. Output words paired with no source word are kept. An output with another number of words
    than the source is put back whole: the noise model never adds or removes a word, so such an output is
    a slip of decoding (it stopped early, or repeated itself). This favours copying the input: a model's
    slip that writes a non-word where the input was right is undone, and a correction into a real word
    stands.
    """
    src, out = source.split(), output.split()
    if len(src) != len(out):
        return " ".join(src)
    paired = {j: i for i, j in enumerate(align_words(src, out)) if j is not None}  # output word -> source word
    kept = []
    for j, word in enumerate(out):
        i = paired.get(j)
        if i is None or word == src[i] or all(w.lower() in known for is_letter, w in _words(word) if is_letter):
            kept.append(word)
        else:
            kept.append(src[i])
    return " ".join(kept)
