"""The noise model of task spell (lm.data.noise): edit counts, rate, determinism, what it never touches."""

import itertools
import random
import string

import pytest

from lm.data.noise import EDITS, KEYBOARD, Corruption, NoiseModel, load_misspellings
from lm.spelling import edit_distance

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Thou art a villain, and I will prove it!",
    "In 1984, 3 of us met at 10:30 (sharp) -- didn't we?",
    "O, what a rogue and peasant slave am I!",
    "ALL CAPS SHOUTING AND a b c d e f",
]


def random_sentence(rng: random.Random) -> str:
    """Words of 1..8 characters: mostly letters (both cases), some digits and punctuation, a few non-ASCII."""
    pool = string.ascii_letters * 4 + string.digits + ",.;:!?'-()\"" + "éßü"
    words = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 8))) for _ in range(rng.randint(1, 10))]
    return " ".join(words)


def non_letters(s: str) -> str:
    return "".join(c for c in s if not c.isalpha())


def shape(s: str) -> str:
    """s with every run of letters written "a": the same for clean and noisy when no run vanished or split."""
    return "".join("a" if is_letter else "".join(run) for is_letter, run in itertools.groupby(s, str.isalpha))


def test_keyboard():
    assert set(KEYBOARD) == set(string.ascii_lowercase)
    assert sorted(KEYBOARD["s"]) == sorted("qwedcxza")
    assert sorted(KEYBOARD["q"]) == sorted("wsa")
    assert sorted(KEYBOARD["m"]) == sorted("njkh")
    for key, near in KEYBOARD.items():
        assert key not in near and len(set(near)) == len(near)
        assert all(key in KEYBOARD[k] for k in near)  # touching is symmetric
    assert EDITS == ("insert", "delete", "substitute", "transpose")


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_exact_edits(k):
    noise, rng = NoiseModel(edits=k), random.Random(k)
    for s in SENTENCES * 20:
        c = noise.corrupt(s, rng)
        assert isinstance(c, Corruption) and c.edits == k and c.misspelled == 0
        assert edit_distance(c.noisy, s) <= 2 * k  # a transpose is 2 Levenshtein edits


def test_exact_edits_on_short_sentences():
    noise, rng = NoiseModel(edits=4), random.Random(0)
    assert noise.corrupt("ab", rng).edits == 4  # more edits than letters: further rounds
    assert noise.corrupt("a", rng).noisy.isalpha()  # a one-letter word is never deleted
    assert noise.corrupt("12, 34!", rng) == Corruption("12, 34!", 0, 0)
    assert noise.corrupt("", rng) == Corruption("", 0, 0)


def test_one_edit_changes_the_sentence():
    noise, rng = NoiseModel(edits=1), random.Random(1)
    for s in SENTENCES * 20:
        assert 1 <= edit_distance(noise.corrupt(s, rng).noisy, s) <= 2


def test_rate():
    rng = random.Random(0)
    sentences = [random_sentence(rng) for _ in range(2000)]
    letters = sum(c.isalpha() for s in sentences for c in s)
    for rate in (0.05, 0.2):
        noise = NoiseModel(rate=rate)
        edits = sum(noise.corrupt(s, rng).edits for s in sentences)
        assert edits / letters == pytest.approx(rate, abs=0.01 if rate == 0.05 else 0.02)
    assert sum(NoiseModel(rate=1.0).corrupt(s, rng).edits for s in sentences[:50]) == \
        sum(c.isalpha() for s in sentences[:50] for c in s)


def test_no_noise_unchanged():
    noise, rng = NoiseModel(rate=0.0, edits=0), random.Random(0)
    for s in SENTENCES:
        assert noise.corrupt(s, rng) == Corruption(s, 0, 0)


def test_deterministic():
    noise = NoiseModel(rate=0.1, misspelling_rate=0.5, misspellings={"villain": ["vilain", "villian"]})
    runs = [[noise.corrupt(s, random.Random(seed)) for s in SENTENCES * 4] for seed in (7, 7, 8)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]
    rng = random.Random(3)
    first = [noise.corrupt(s, rng) for s in SENTENCES]
    rng = random.Random(3)
    assert [noise.corrupt(s, rng) for s in SENTENCES] == first


@pytest.mark.parametrize("noise", [NoiseModel(rate=0.3), NoiseModel(edits=3), NoiseModel(rate=1.0),
                                   NoiseModel(edits=12)], ids=["rate", "edits", "every-letter", "many"])
def test_words_and_non_letters_kept(noise):
    rng = random.Random(5)
    for _ in range(400):
        s = random_sentence(rng)
        noisy = noise.corrupt(s, rng).noisy
        assert len(noisy.split()) == len(s.split())
        assert non_letters(noisy) == non_letters(s)  # spaces, digits, punctuation: same, in order
        assert shape(noisy) == shape(s)  # every word keeps a letter; edits stay inside their word


def test_case_kept():
    rng = random.Random(2)
    for noise in (NoiseModel(rate=0.5), NoiseModel(edits=4)):
        for _ in range(200):
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9)))
            assert noise.corrupt(word, rng).noisy.islower()
            assert noise.corrupt(word.upper(), rng).noisy.isupper()
    one, transposed = NoiseModel(edits=1), set()
    for _ in range(300):
        noisy = one.corrupt("Hello", rng).noisy
        if sorted(noisy.lower()) == sorted("hello") and noisy.lower() != "hello":
            transposed.add(noisy)
    assert {"Ehllo", "Hlelo", "Helol"} <= transposed  # each position keeps its case
    assert transposed <= {"Ehllo", "Hlelo", "Helol"}


def test_each_kind_happens():
    rng, noise = random.Random(4), NoiseModel(edits=1)
    seen = set()
    for _ in range(300):
        noisy = noise.corrupt("hello", rng).noisy
        seen.add("insert" if len(noisy) == 6 else "delete" if len(noisy) == 4 else
                 "transpose" if sorted(noisy) == sorted("hello") else "substitute")
    assert seen == set(EDITS)


def test_human_misspellings():
    table = {"villain": ["vilain"], "prove": ["proove", "pruve"]}
    noise, rng = NoiseModel(rate=0.0, misspelling_rate=1.0, misspellings=table), random.Random(0)
    c = noise.corrupt("Thou art a villain, and I will prove it!", rng)
    assert c.misspelled == 2 and c.edits == 0
    assert c.noisy in {f"Thou art a vilain, and I will {p} it!" for p in table["prove"]}
    assert noise.corrupt("VILLAIN Villain villain's", rng).noisy == "VILAIN Vilain vilain's"
    half = NoiseModel(rate=0.0, misspelling_rate=0.5, misspellings=table)
    hits = sum(half.corrupt("villain", rng).misspelled for _ in range(400))
    assert 150 < hits < 250


def test_codespell_misspellings():
    pytest.importorskip("codespell_lib")
    table = load_misspellings()
    assert len(table) > 5000
    assert "recieve" in table["receive"]
    assert load_misspellings() is table  # cached
    for right, wrongs in list(table.items())[:2000]:
        assert right.isalpha() and right.islower() and right.isascii()
        assert wrongs and all(w.isalpha() and w.islower() and w.isascii() and w != right for w in wrongs)
    noise = NoiseModel(rate=0.0, misspelling_rate=1.0, misspellings=table)
    c = noise.corrupt("I receive it.", random.Random(0))
    assert c.misspelled == 1 and c.noisy.split()[1] in table["receive"]


def test_without_codespell(monkeypatch):
    import importlib.resources

    def missing(name):
        raise ModuleNotFoundError(f"No module named {name!r}")

    load_misspellings.cache_clear()
    monkeypatch.setattr(importlib.resources, "files", missing)
    try:
        with pytest.raises(ValueError, match=r"codespell.*misspellings: none"):
            load_misspellings()
    finally:
        load_misspellings.cache_clear()


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": -0.1}, "rate -0.1"), ({"rate": 1.5}, "rate 1.5"), ({"rate": float("nan")}, "rate nan"),
    ({"edits": -1}, "edits -1"), ({"edits": 1.5}, "edits 1.5"),
    ({"misspelling_rate": 2.0, "misspellings": {}}, "misspelling_rate 2.0"),
    ({"misspelling_rate": 0.1}, "misspelling_rate 0.1 needs a misspellings table"),
    ({"misspellings": {"Villain": ["vilain"]}}, "'Villain'"),
    ({"misspellings": {"villain": ["vil ain"]}}, "'vil ain'"),
])
def test_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NoiseModel(**kwargs)
