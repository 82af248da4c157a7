
import numpy as np
import pytest

import lm.data.corpus
from lm.data import windows
from lm.data.corpus import DataError, obtain_corpus, prepare_corpus, split_point
from lm.data.tokenizer import CharTokenizer, UnknownCharactersError


def test_tokenizer_round_trip_and_unknown_characters():
    tok = CharTokenizer.from_text("hello world")
    ids = tok.encode("hello")
    assert ids.dtype == np.uint16 and tok.decode(ids) == "hello"
    with pytest.raises(UnknownCharactersError) as e:
        tok.encode("help!")
    assert "'p'" in str(e.value) and "'!'" in str(e.value)
    assert CharTokenizer.from_state(tok.state()).chars == tok.chars


def test_large_vocabulary_uses_uint32(tmp_path):
    text = "".join(chr(c) for c in range(0x4E00, 0x4E00 + 70_000) if not 0xD800 <= c < 0xE000)
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size > 65536 and tok.dtype == np.uint32
    path = tmp_path / "big.txt"
    path.write_text(text, encoding="utf-8")
    corpus = prepare_corpus(path, tmp_path / "cache", 0.1, 8)
    assert corpus.train.dtype == np.uint32
    assert tok.decode(corpus.val[:5]) == text[split_point(len(text), 0.1):][:5]


def test_split_is_first_90_last_10(small_corpus, tmp_path):
    text = small_corpus.read_text(encoding="utf-8")
    corpus = prepare_corpus(small_corpus, tmp_path / "cache", 0.1, 16)
    assert len(corpus.train) == int(len(text) * 0.9) and len(corpus.train) + len(corpus.val) == len(text)
    assert corpus.tokenizer.decode(corpus.train[:50]) == text[:50]
    assert corpus.tokenizer.decode(corpus.val[-50:]) == text[-50:]


def test_shakespeare_split_sizes(shakespeare, tmp_path):
    corpus = prepare_corpus(shakespeare, tmp_path / "cache", 0.1, 64)
    assert (len(corpus.train), len(corpus.val), corpus.tokenizer.vocab_size) == (1_003_854, 111_540, 65)


def test_cache_is_reused_until_the_corpus_changes(small_corpus, tmp_path):
    cache = tmp_path / "cache"
    first = prepare_corpus(small_corpus, cache, 0.1, 16)
    again = prepare_corpus(small_corpus, cache, 0.1, 16)
    assert not first.reused_cache and again.reused_cache
    assert np.array_equal(first.train, again.train)
    small_corpus.write_text("a different corpus " * 200, encoding="utf-8")
    changed = prepare_corpus(small_corpus, cache, 0.1, 16)
    assert not changed.reused_cache and changed.tokenizer.vocab_size < first.tokenizer.vocab_size


def test_invalid_utf8_names_file_and_offset(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"hello there\xff\xfeworld" * 3)
    with pytest.raises(DataError) as e:
        prepare_corpus(path, tmp_path / "cache", 0.1, 4)
    assert "bad.txt" in str(e.value) and "byte offset 11" in str(e.value)


@pytest.mark.parametrize("content,needle", [
    (b"", "is empty"),
    (b"x", "too short"),
    (b"abcdefghij" * 5, "too short"),
    (b"\x00\x01\x02\x03" * 100, "binary"),
])
def test_unusable_corpora(tmp_path, content, needle):
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    with pytest.raises(DataError) as e:
        prepare_corpus(path, tmp_path / "cache", 0.1, 16)
    assert needle in str(e.value) and "corpus.txt" in str(e.value)


def test_too_short_names_both_lengths(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("abcdefghij" * 10)  # 100 chars: 90 train, 10 val
    with pytest.raises(DataError) as e:
        prepare_corpus(path, tmp_path / "cache", 0.1, 16)
    msg = str(e.value)
    assert "90" in msg and "10" in msg and "17" in msg and "block_size" in msg


def test_empty_directory_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / ".hidden.txt").write_text("hidden files are skipped " * 100)
    with pytest.raises(DataError, match="is a directory with no files"):
        prepare_corpus(tmp_path / "empty", tmp_path / "cache", 0.1, 16)
    with pytest.raises(DataError, match="does not exist"):
        obtain_corpus(str(tmp_path / "nothing.txt"))
    with pytest.raises(DataError, match="matches no files"):
        obtain_corpus(str(tmp_path / "nothing" / "*.txt"))


def test_offline_fallback_for_missing_tinyshakespeare(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(lm.data.corpus.urllib.request, "urlopen", no_network)
    source = obtain_corpus(str(tmp_path / "data" / "tinyshakespeare" / "input.txt"))
    assert source.files == [tmp_path / "data" / "python_docs" / "input.txt"]
    assert "OFFLINE FALLBACK" in source.note and "network is unreachable" in source.note
    assert len(source.files[0].read_text(encoding="utf-8")) > 100_000


def test_existing_file_is_used_as_is(small_corpus):
    source = obtain_corpus(str(small_corpus))
    assert source.files == [small_corpus] and source.note is None


def test_batches_are_a_function_of_seed_and_index(small_corpus, tmp_path):
    corpus = prepare_corpus(small_corpus, tmp_path / "cache", 0.1, 16)
    x1, y1 = windows.window_batch(corpus.train, 4, 16, seed=1, index=7)
    x2, y2 = windows.window_batch(corpus.train, 4, 16, seed=1, index=7)
    x3, _ = windows.window_batch(corpus.train, 4, 16, seed=1, index=8)
    assert x1.shape == (4, 16) and (x1 == x2).all() and (y1 == y2).all() and not (x1 == x3).all()
    assert (x1[:, 1:] == y1[:, :-1]).all()  # targets are the inputs shifted by one


def test_worker_batches_equal_in_process_batches(small_corpus, tmp_path):
    corpus = prepare_corpus(small_corpus, tmp_path / "cache", 0.1, 16)
    inline = windows.batch_iterator(corpus.train, 4, 16, seed=3, start=5)
    workers = windows.batch_iterator(corpus.train, 4, 16, seed=3, start=5, num_workers=2)
    for _ in range(6):
        (xa, ya), (xb, yb) = next(inline), next(workers)
        assert (xa == xb).all() and (ya == yb).all()


def test_sequential_windows_cover_every_token_once():
    ids = np.arange(1000, dtype=np.uint16)
    targets = np.concatenate([y.numpy().ravel() for _, y in windows.sequential_windows(ids, 64, 5)])
    assert np.array_equal(targets, np.arange(1, 1000))
