"""Rule-based sentence splitting (lm/data/sentences.py): one or more tests per rule of the module
docstring, streaming equal to whole-text splitting, bounded memory, and the two real corpora."""

import re
from pathlib import Path

import pytest

from conftest import SHAKESPEARE, offline_text
from lm.data.sentences import SentenceSplitter, iter_sentences, normalise_space, split_sentences

# rule 6's secondary boundaries, as a sentence over max_chars must have none of
BOUNDARY = re.compile(r"[;:,][\"'”’)\]]* |(?<= )--(?= )|—.")


# ----------------------------------------------------------------------------- whitespace (rule 7)

@pytest.mark.parametrize("text, expected", [
    ("  a  b ", "a b"),
    ("one\ntwo\r\nthree\tfour", "one two three four"),
    ("nb\u00a0sp\u2003em \u2028 sep", "nb sp em sep"),
    ("\n\t \u00a0", ""),
    ("", ""),
])
def test_normalise_space(text, expected):
    assert normalise_space(text) == expected


def test_whitespace_inside_sentences_is_one_space():
    text = "The  kettle\tboiled\u00a0over.   We\u00a0 ran  to it!\n"
    assert split_sentences(text) == ["The kettle boiled over.", "We ran to it!"]


def test_empty_and_blank_texts_give_nothing():
    assert split_sentences("") == []
    assert split_sentences(" \n\n\t\n \u00a0 \n") == []


# ----------------------------------------------------------------------------- ends (rule 1)

@pytest.mark.parametrize("text, expected", [
    ("The tide turned. Boats came in.", ["The tide turned.", "Boats came in."]),
    ("Is it late? It is.", ["Is it late?", "It is."]),
    ("Stop! Look! Listen.", ["Stop!", "Look!", "Listen."]),
    ("You did what?! I never!!! Fine...", ["You did what?!", "I never!!!", "Fine..."]),
    ("No ending here", ["No ending here"]),
    ("It ends at the end.", ["It ends at the end."]),
    ("lower case follows. it still ends", ["lower case follows.", "it still ends"]),
    ('"Really?" he asked.', ['"Really?"', "he asked."]),
])
def test_sentence_end_punctuation(text, expected):
    assert split_sentences(text) == expected


@pytest.mark.parametrize("text, expected", [
    ('She said "Run." Then she ran.', ['She said "Run."', "Then she ran."]),
    ("He wrote 'Done.' Nobody read it.", ["He wrote 'Done.'", "Nobody read it."]),
    ("She whispered “Wait!” We waited.", ["She whispered “Wait!”", "We waited."]),
    ("He hummed ‘Softly?’ Yes, softly.", ["He hummed ‘Softly?’", "Yes, softly."]),
    ("(The lamp was lit.) The room glowed.", ["(The lamp was lit.)", "The room glowed."]),
    ("[Exit the crowd.] Silence.", ["[Exit the crowd.]", "Silence."]),
    ('We sang ("Home again.") Then slept.', ['We sang ("Home again.")', "Then slept."]),
])
def test_closing_quotes_and_brackets_belong_to_the_sentence_they_close(text, expected):
    assert split_sentences(text) == expected


# ----------------------------------------------------------------------------- abbreviations (rule 2)

@pytest.mark.parametrize("text", [
    "Mr. Hale and Mrs. Hale met Ms. Ode and Dr. Fox at St. Ives.",
    "Prof. Lim, Sr. Ruiz and Jr. Mays heard Rev. Amos.",
    "Gen. Bly, Capt. Orr, Col. Ames, Lt. Vance and Sgt. Toms climbed Mt. Hood.",
    "Bring fruit, e.g. pears, i.e. something sweet.",
    "Red vs. blue, cf. the last game, viz. the final.",
    "It weighs approx. Four kilos.",
    "J. R. R. Tolkien wrote it.",
    "The letter was signed by A. B. Cole.",
    "See No. 7 and Fig. 3 and Vol. 2 on p. 14.",
    "See Fig. (4) for details.",
    "They sold apples, pears, etc. and then went home.",
    "Smith et al. (1999) found it.",
    "The U.S. and the U.K. agreed at 5 p.m. today.",
])
def test_abbreviations_do_not_end_a_sentence(text):
    assert split_sentences(text) == [text]


@pytest.mark.parametrize("text, expected", [
    # etc. and al. (and dotted initialisms) end before a capitalised word
    ("They sold apples, pears, etc. Then they left.", ["They sold apples, pears, etc.", "Then they left."]),
    ("It was shown by Smith et al. Later work agreed.", ["It was shown by Smith et al.", "Later work agreed."]),
    ("She moved to the U.S. Her sister stayed.", ["She moved to the U.S.", "Her sister stayed."]),
    # "No." ends unless a number follows; "I." is a word, not an initial
    ("No. I will not go.", ["No.", "I will not go."]),
    ("Who did it? Not I. Ask him.", ["Who did it?", "Not I.", "Ask him."]),
    # titles never end, even before a capital
    ("I saw Dr. Who today.", ["I saw Dr. Who today."]),
])
def test_abbreviations_that_can_end_a_sentence(text, expected):
    assert split_sentences(text) == expected


def test_lowercase_title_is_an_ordinary_word():
    assert split_sentences("Take the second st. Go left.") == ["Take the second st.", "Go left."]


# ----------------------------------------------------------------------------- inside words (rule 3)

@pytest.mark.parametrize("text", [
    "Pi is 3.14 or so.",
    "Upgrade to v1.2 now.",
    "It ran 1.5x faster.",
    "Visit www.python.org for more.",
    "Set a.b to four.",
    "The answer was Yes!no doubt about it.",
    "Ask?Then wait.",
])
def test_punctuation_without_whitespace_after_never_splits(text):
    assert split_sentences(text) == [text]


def test_dot_at_the_end_of_a_domain_still_ends():
    assert split_sentences("Go to www.python.org. It helps.") == ["Go to www.python.org.", "It helps."]


# ----------------------------------------------------------------------------- ellipses (rule 4)

@pytest.mark.parametrize("text, expected", [
    ("I thought... maybe not.", ["I thought... maybe not."]),
    ("I thought… maybe not.", ["I thought… maybe not."]),
    ("Wait ... and see.", ["Wait ... and see."]),
    ("It had 3... 4 cats.", ["It had 3... 4 cats."]),
    ("I waited... Nobody came.", ["I waited...", "Nobody came."]),
    ("I waited… Nobody came.", ["I waited…", "Nobody came."]),
    ('He paused... "go on," he said.', ['He paused... "go on," he said.']),
    ('He paused... "Go!" So I went.', ['He paused...', '"Go!"', "So I went."]),
    ("Was it...? Yes.", ["Was it...?", "Yes."]),
])
def test_ellipses(text, expected):
    assert split_sentences(text) == expected


# ----------------------------------------------------------------------------- lines (rule 5)

def test_blank_line_always_ends_a_sentence():
    text = "a heading with no stop\n\nthe body starts here, in lowercase\n\n\n  \nlast one"
    assert split_sentences(text) == ["a heading with no stop", "the body starts here, in lowercase", "last one"]


def test_blank_line_ends_even_after_an_abbreviation_or_ellipsis():
    assert split_sentences("Ask Dr.\n\nsmith answered...\n\nlater") == ["Ask Dr.", "smith answered...", "later"]


@pytest.mark.parametrize("heading", ["ROMEO:", "First Citizen:", "KING HENRY VI:", "Lady Capulet:",
                                     "DUKE OF YORK:", "  MERCUTIO:  ", "O'Brien:", "Anne-Marie:"])
def test_speaker_headings_are_boundaries_and_dropped(heading):
    text = f"the crowd shouts\n{heading}\nand then the speech begins.\n"
    assert split_sentences(text) == ["the crowd shouts", "and then the speech begins."]


@pytest.mark.parametrize("line", [
    "Duke of York:",  # a lowercase word
    "One Two Three Four Five:",  # five words
    "Hark, Romeo:",  # a comma
    "ROMEO: hello",  # text after the colon
    "romeo:",
])
def test_lines_that_are_not_speaker_headings_are_kept(line):
    assert normalise_space(line) in " ".join(split_sentences(f"and so\n{line}\n"))


def test_a_play_scene():
    text = ("ROMEO:\nBut soft, what light through yonder window breaks\nIt is the east\n\n"
            "JULIET:\nAy me!\n\nFirst Citizen:\nSpeak, speak.\n")
    assert split_sentences(text) == ["But soft, what light through yonder window breaks", "It is the east",
                                     "Ay me!", "Speak, speak."]


def test_verse_line_starting_with_a_capital_ends_the_sentence_before_it():
    text = "Shall I compare thee to a summer's day\nThou art more lovely and more temperate\n"
    assert split_sentences(text) == ["Shall I compare thee to a summer's day",
                                     "Thou art more lovely and more temperate"]


@pytest.mark.parametrize("second", ["and wraps onto this line.", "3 more words.", '"quoted" words.',
                                    "(in brackets) here.", "'tis so."])
def test_line_not_starting_with_a_capital_continues_the_sentence(second):
    assert split_sentences(f"A sentence that\n{second}\n") == [f"A sentence that {second}"]


def test_wrapped_prose_before_a_capital_is_split_documented_limit():
    assert split_sentences("The code is written in\nPython and C.\n") == ["The code is written in", "Python and C."]
    assert split_sentences("I met Mr.\nSmith there.\n") == ["I met Mr.", "Smith there."]


def test_ellipsis_and_abbreviation_at_a_line_end_before_a_lowercase_line():
    assert split_sentences("We waited...\nand waited.\nAsk Dr.\nsmith.\n") == [
        "We waited... and waited.", "Ask Dr. smith."]


# ----------------------------------------------------------------------------- max_chars (rule 6)

def test_short_sentences_are_untouched_by_max_chars():
    text = "One; two, three: four -- five. Six."
    assert split_sentences(text, max_chars=100) == split_sentences(text) == ["One; two, three: four -- five.", "Six."]


def test_semicolons_are_tried_before_colons_and_commas():
    text = "alpha, beta: gamma; delta, epsilon: zeta"
    assert split_sentences(text, max_chars=25) == ["alpha, beta: gamma;", "delta, epsilon: zeta"]


def test_colons_are_tried_before_commas():
    text = "alpha, beta, gamma: delta, epsilon, zeta"
    assert split_sentences(text, max_chars=25) == ["alpha, beta, gamma:", "delta, epsilon, zeta"]


def test_greedy_cuts_take_the_last_boundary_that_fits():
    text = "one, two, three, four, five, six, seven, eight"
    pieces = split_sentences(text, max_chars=20)
    assert pieces == ["one, two, three,", "four, five, six,", "seven, eight"]
    assert all(len(p) <= 20 for p in pieces)


def test_no_fitting_boundary_cuts_at_the_first_one_after():
    text = "averyveryverylongword, short, another"
    assert split_sentences(text, max_chars=10) == ["averyveryverylongword,", "short,", "another"]


def test_a_piece_too_long_after_one_level_is_cut_at_the_next():
    text = "first part, with a comma; second part, with another, and more"
    pieces = split_sentences(text, max_chars=20)
    assert pieces == ["first part,", "with a comma;", "second part,", "with another,", "and more"]


@pytest.mark.parametrize("text, expected", [
    ("the storm came in -- the boats were all out", ["the storm came in --", "the boats were all out"]),
    ("the storm came in—the boats were all out", ["the storm came in—", "the boats were all out"]),
    ("the storm came in — the boats were all out", ["the storm came in —", "the boats were all out"]),
])
def test_dashes_are_boundaries(text, expected):
    assert split_sentences(text, max_chars=25) == expected


@pytest.mark.parametrize("text", [
    "numbers like 1,000,000 and times like 10:30 stay whole here",
    "the option --verbose and a-b-c stay whole in this one too",
    "nothingtocutinthisverylongwordatallreally",
])
def test_what_is_not_a_boundary_stays_whole_even_when_too_long(text):
    assert split_sentences(text, max_chars=20) == [text]


def test_closing_quote_after_a_comma_goes_with_it():
    text = '"Come here," she said, "and sit down by the fire"'
    assert split_sentences(text, max_chars=20) == ['"Come here,"', "she said,", '"and sit down by the fire"']


def test_a_trailing_boundary_gives_no_empty_piece():
    pieces = split_sentences("a rather long clause that ends in a comma,\n\n", max_chars=10)
    assert pieces == ["a rather long clause that ends in a comma,"]


@pytest.mark.parametrize("bad", [0, -5])
def test_max_chars_must_be_positive(bad):
    with pytest.raises(ValueError, match="max_chars"):
        SentenceSplitter(bad)


# ----------------------------------------------------------------------------- streaming

TEXTS = [
    "",
    "One. Two? Three!\n",
    "ROMEO:\nBut soft, what light\nthrough yonder window breaks?\n\nJULIET:\nAy me...\n",
    "Dr. Fox met J. R. R.\nTolkien, etc. Then left... and came back.\r\nLast line without a break",
    "para one\n\n\n\npara two;\twith, commas — and a dash -- here\n" * 3,
    "a\x0cb\u2028C d.\x1cE f\n\n",
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("max_chars", [None, 12])
def test_streaming_equals_whole_text(text, max_chars):
    whole = split_sentences(text, max_chars)
    assert list(iter_sentences(text.splitlines(keepends=True), max_chars)) == whole
    assert list(iter_sentences(text.splitlines(), max_chars)) == whole
    splitter, fed = SentenceSplitter(max_chars), []
    for line in text.splitlines(keepends=True):
        fed += splitter.feed(line)
    assert fed + splitter.close() == whole
    assert splitter.close() == []  # empty after close, ready for another text
    assert all(s and s == normalise_space(s) for s in whole)


def test_sentences_come_out_as_soon_as_they_are_complete():
    splitter = SentenceSplitter()
    assert splitter.feed("It rained. The roads\n") == ["It rained."]
    assert splitter.feed("flooded. Dr.\n") == ["The roads flooded."]
    assert splitter.feed("smith came...\n") == []  # "came..." waits for the next word
    assert splitter.feed("and went\n") == []  # a lowercase line continues
    assert splitter.feed("Home\n") == ["Dr. smith came... and went"]
    assert splitter.close() == ["Home"]


def test_a_file_is_split_line_by_line(tmp_path):
    path = tmp_path / "text.txt"
    text = "KING HENRY VI:\nWhat news?\n\nMESSENGER:\nNone, my lord... none at all.\nIt is quiet.\n"
    path.write_text(text, encoding="utf-8")
    with open(path, encoding="utf-8") as f:
        assert list(iter_sentences(f)) == split_sentences(text) == [
            "What news?", "None, my lord... none at all.", "It is quiet."]


# ----------------------------------------------------------------------------- bounded memory (rule 8)

def test_a_text_with_no_boundary_is_flushed_before_close():
    splitter, before = SentenceSplitter(), []
    for _ in range(200_000):
        before += splitter.feed("and on it goes\n")
    after = splitter.close()
    assert len(before) >= 20  # flushed as it went, not all at the end
    assert all(len(s) <= 100_000 for s in before + after)
    assert " ".join(before + after) == " ".join(["and on it goes"] * 200_000)  # cut at spaces, nothing lost


def test_the_bound_follows_max_chars_and_cuts_inside_one_huge_word():
    splitter = SentenceSplitter(max_chars=10)  # bound: 640 characters
    out = splitter.feed("x" * 2000)
    assert out and all(len(s) <= 640 for s in out)
    assert "".join(out + splitter.close()) == "x" * 2000


# ----------------------------------------------------------------------------- real corpora

def _check_corpus(sentences: list[str]) -> None:
    assert sentences
    for s in sentences:
        assert s and s == s.strip() and "  " not in s
        assert len(s) <= 60 or not BOUNDARY.search(s), s


def _shakespeare() -> Path:
    for path in (Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare" / "input.txt", SHAKESPEARE):
        if path.is_file():
            return path
    pytest.skip("Tiny Shakespeare is not at data/tinyshakespeare/input.txt (nor beside this clone)")


def test_tiny_shakespeare():
    with open(_shakespeare(), encoding="utf-8") as f:
        sentences = list(iter_sentences(f, max_chars=60))
    _check_corpus(sentences)
    assert not any(s in ("ROMEO:", "JULIET:", "First Citizen:", "All:", "KING RICHARD III:") for s in sentences)
    assert not any(re.fullmatch(r"[A-Z][A-Z ]+:", s) for s in sentences)
    assert sum(20 <= len(s) <= 60 for s in sentences) > 0.5 * len(sentences)


def test_offline_corpus():
    text = offline_text()[:2_000_000]
    sentences = split_sentences(text, max_chars=60)
    _check_corpus(sentences)
    assert len(sentences) > 1000


def test_a_line_of_punctuation_alone_ends_a_sentence_and_is_dropped():
    text = 'The "assert" statement\n**********************\n\nAssert statements are a way in.\n----\nthen more.'
    assert split_sentences(text) == ['The "assert" statement', "Assert statements are a way in.", "then more."]
