"""Scores of task spell and the dictionary baseline (lm.spelling), the known-word filter, and copy_margin's
teacher-forced scores (lm.generate.score_targets, keeps_input), on hand-computed cases."""

import math

import pytest
import torch

from lm.config import ModelConfig
from lm.data.padding import pad_sequences
from lm.data.tasks import BOS, EOS, PAD
from lm.generate import keeps_input, score_targets
from lm.nn import EncoderDecoder
from lm.spelling import (DictionaryCorrector, WordAccuracy, align_words, cer, edit_distance, exact_match,
                         keep_known_changes, spelling_scores, word_accuracy)


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


# ----------------------------------------------------------------------------- the known-word filter

KNOWN = {"thou", "art", "a", "villain", "and", "beggar", "o", "er", "the", "then"}


@pytest.mark.parametrize("source, output, expected", [
    ("Thou art a vilain", "Thou art a villain", "Thou art a villain"),      # a correction into a word stands
    ("Thou art a villain", "Thou art a vollain", "Thou art a villain"),     # a change into a non-word is undone
    ("the vilain", "then vilainz", "then vilain"),                          # each word on its own
    ("o'er the", "o'er then", "o'er then"),                                 # runs of letters: "o" and "er" known
    ("Thou art a villain and", "Thou art a", "Thou art a villain and"),     # fewer words: a slip, put back whole
    ("Thou art", "Thou art art", "Thou art"),                               # more words: put back whole
])
def test_keep_known_changes(source, output, expected):
    assert keep_known_changes(source, output, KNOWN) == expected


# ----------------------------------------------------------------------------- copy_margin's scores

def tiny_seq2seq():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=9, block_size=8, num_blocks=1, num_heads=2, embedding_dim=16, dropout=0.0)
    return EncoderDecoder(cfg).eval()


def test_score_targets_is_the_teacher_forced_log_probability():
    model = tiny_seq2seq()
    src, mask = pad_sequences([[3, 4, 5], [6, 7]], PAD)
    targets = [[5, 4, 3], [7]]
    got = score_targets(model, src, mask, targets, BOS, EOS, PAD)
    for b, t in enumerate(targets):  # one row at a time, by hand: sum of log p(token) over target + EOS
        tgt_in = torch.tensor([[BOS, *t]])
        logits, _ = model(src[b : b + 1, : len([3, 4, 5]) if b == 0 else 2], tgt_in, None)
        want = torch.log_softmax(logits[0], -1)[torch.arange(len(t) + 1), torch.tensor([*t, EOS])].sum()
        assert got[b].item() == pytest.approx(want.item(), abs=1e-5)


def test_keeps_input_unless_the_output_is_more_likely_by_the_margin():
    model = tiny_seq2seq()
    src, mask = pad_sequences([[3, 4, 5], [6, 7], [8]], PAD)
    inputs, outputs = [[3, 4, 5], [6, 7], [8]], [[3, 4, 6], [7, 6], [8]]  # the third is unchanged
    gain = (score_targets(model, src, mask, outputs, BOS, EOS, PAD)
            - score_targets(model, src, mask, inputs, BOS, EOS, PAD)).tolist()
    assert keeps_input(model, src, mask, inputs, outputs, 0.0, 8)[:2] == [g < 0 for g in gain[:2]]
    assert keeps_input(model, src, mask, inputs, outputs, 1e9, 8) == [True, True, False]  # never an unchanged row
    low = min(gain[:2]) - 1.0
    assert keeps_input(model, src, mask, inputs, outputs, max(0.0, low), 8)[:2] == [g < max(0.0, low) for g in gain[:2]]
    assert keeps_input(model, src, mask, inputs, outputs, 1e9, 3) == [False, True, False]  # too long to score: output
    assert keeps_input(model, src, mask, inputs, outputs, None, 8) == [False, False, False]  # no copy_margin: outputs
