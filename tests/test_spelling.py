"""Scores of task spell and the dictionary baseline (lm.spelling), on hand-computed cases."""

import math

import pytest

from lm.spelling import (DictionaryCorrector, WordAccuracy, align_words, cer, edit_distance, exact_match,
                         spelling_scores, word_accuracy)


@pytest.mark.parametrize("a, b, d", [
    ("kitten", "sitting", 3), ("", "", 0), ("", "abc", 3), ("abc", "", 3), ("flaw", "lawn", 2),
    ("ab", "ba", 2), ("same", "same", 0), ("a", "b", 1),
    (["the", "cat"], ["the", "hat", "sat"], 2), ([], ["x"], 1), ((1, 2, 3), (1, 3), 1),
])
def test_edit_distance(a, b, d):
    assert edit_distance(a, b) == d
    assert edit_distance(b, a) == d


def test_cer_and_exact():
    assert cer(["abc", "xy"], ["abd", "xyz"]) == pytest.approx(2 / 6)
    assert cer(["same"], ["same"]) == 0.0
    assert cer(["", "ab"], ["abc", "ab"]) == pytest.approx(3 / 5)
    assert exact_match(["a", "b", "c"], ["a", "x", "c"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 outputs for 1 targets"):
        cer(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="1 outputs for 2 targets"):
        exact_match(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no targets"):
        exact_match([], [])
    with pytest.raises(ValueError, match="no characters"):
        cer(["x"], [""])


@pytest.mark.parametrize("ref, hyp, expected", [
    ("a b c", "a b c", [0, 1, 2]),
    ("a b", "a x b", [0, 2]),  # insertion
    ("a b c", "a c", [0, None, 1]),  # deletion
    ("a b c", "a x c", [0, 1, 2]),  # substitution
    ("a b", "", [None, None]),
    ("", "a b", []),
    ("a b", "ab", [None, 0]),  # a tie: the later word is paired
    ("into the house", "in to the house", [1, 2, 3]),
    ("a b c", "x a b c y", [1, 2, 3]),
])
def test_align_words(ref, hyp, expected):
    assert align_words(ref.split(), hyp.split()) == expected


@pytest.mark.parametrize("clean, noisy, output, counts", [
    ("the cat sat", "teh cat sat", "the cat sat", (1, 1, 2, 2)),  # all right
    ("the cat sat", "teh cat sat", "teh cat sat", (0, 1, 2, 2)),  # copied the noise
    ("the cat sat", "teh cat sat", "the cot sat", (1, 1, 1, 2)),  # broke a correct word
    ("a lot of fun", "a lot of fnu", "alot of fun", (1, 1, 1, 3)),  # merged "a lot": both wrong
    ("into the house", "inot the house", "in to the house", (0, 1, 2, 2)),  # split "into": wrong
    ("a b c", "a bc", "a b c", (2, 2, 1, 1)),  # noisy word count differs: b deleted, c paired with "bc"
    ("a b", "a b", "", (0, 0, 0, 2)),
])
def test_word_accuracy(clean, noisy, output, counts):
    assert word_accuracy(clean, noisy, output) == WordAccuracy(*counts)


def test_word_accuracy_sums():
    a, b = WordAccuracy(1, 2, 3, 4), WordAccuracy(0, 1, 1, 1)
    assert a + b == WordAccuracy(1, 3, 4, 5)
    assert (a + b).corrupted == pytest.approx(1 / 3) and (a + b).untouched == pytest.approx(4 / 5)
    assert math.isnan(WordAccuracy().corrupted) and math.isnan(WordAccuracy().untouched)


def test_spelling_scores():
    targets, noisy, outputs = ["the cat", "a dog"], ["teh cat", "a dgo"], ["the cat", "a dgo"]
    assert spelling_scores(outputs, targets, noisy) == pytest.approx(
        {"exact": 0.5, "cer": 2 / 12, "word_acc_corrupted": 0.5, "word_acc_untouched": 1.0})
    clean = spelling_scores(targets, targets, targets)
    assert clean["exact"] == 1.0 and clean["cer"] == 0.0 and clean["word_acc_untouched"] == 1.0
    assert math.isnan(clean["word_acc_corrupted"])
    with pytest.raises(ValueError, match="1 noisy sentences for 2 targets"):
        spelling_scores(outputs, targets, noisy[:1])


COUNTS = {"the": 100, "thou": 20, "art": 10, "a": 50, "villain": 5, "spelling": 3, "then": 40, "than": 30,
          "cart": 1, "care": 100, "bat": 7, "cat": 7}


@pytest.fixture(scope="module")
def corrector():
    return DictionaryCorrector(COUNTS)


def test_known_words_kept(corrector):
    for word in ("art", "then", "than", "a", "The", "THOU", "tHe"):
        assert corrector.correct_word(word) == word


def test_corrections(corrector):
    assert corrector.correct_word("vilain") == "villain"  # distance 1
    assert corrector.correct_word("spelin") == "spelling"  # distance 2
    assert corrector.correct_word("thxn") == "then"  # then (40) and than (30) both 1 away: the more frequent
    assert DictionaryCorrector({**COUNTS, "than": 45}).correct_word("thxn") == "than"
    assert corrector.correct_word("cxrt") == "cart"  # cart 1 away beats care (100) 2 away
    assert corrector.correct_word("xat") == "bat"  # bat and cat tie on 7: alphabetical
    assert corrector.correct_word("xyzzyq") == "xyzzyq"  # no candidate within 2
    assert corrector.correct_word("Xyzzyq") == "Xyzzyq"
    assert corrector.correct_word("") == ""


def test_case_and_punctuation(corrector):
    assert corrector.correct_word("Vilain") == "Villain"
    assert corrector.correct_word("VILAIN") == "VILLAIN"
    assert corrector.correct("Thou art a vilain!") == "Thou art a villain!"
    assert corrector.correct("  Thou, 2 vilain' -- art?\n") == "  Thou, 2 villain' -- art?\n"
    assert corrector.correct("") == ""


def test_known_edits1_is_edits1_of_known(corrector):
    for word in ("vilain", "thn", "xat", "cxrt", "the", "spelin", "a", "q", "villains"):
        expected = {w for w in corrector.edits1(word) if w in corrector.counts} - {word}
        assert corrector.known_edits1(word) == expected


def test_from_sentences():
    corrector = DictionaryCorrector.from_sentences(["Don't stop, don't!", "Stop 42 times."])
    assert corrector.counts == {"don": 2, "t": 2, "stop": 2, "times": 1}
    assert corrector.correct("Dont stpo.") == "Don stop."


def test_letters_beyond_ascii():
    corrector = DictionaryCorrector({"café": 3, "cafe": 1})
    assert "é" in corrector.letters
    assert corrector.correct_word("cafè") == "café"  # both 1 away: the more frequent


@pytest.mark.parametrize("counts, match", [
    ({"don't": 1}, '"don\'t"'), ({"": 1}, "''"), ({"word": 0}, "count 0 of 'word'"),
    ({"word": 1.5}, "count 1.5"),
])
def test_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        DictionaryCorrector(counts)
