"""Byte-level BPE (lm/data/bpe.py): training, exact round trips, plain-value states, offline tiktoken."""

import base64
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import regex
import torch

from lm.data.bpe import PATTERN, BpeTokenizer, TiktokenTokenizer, train_bpe
from lm.data.corpus import _offline_text

ROUND_TRIP_TEXTS = [
    "",
    "a",
    " ",
    "hello world",
    "Hello, World! It's 2024; we're   testing   spaces.\n\n\tTabs\ttoo",
    "line one\r\nline two\r\n\r\n",
    "\r",
    "emoji 👩‍👩‍👧‍👦 and 🙂🙃 flags 🇫🇷🇯🇵",
    "CJK 漢字かなカナ 한국어 and Ελληνικά, русский, العربية, עברית",
    "combining e\u0301 a\u0308 n\u0303 and Z\u0351\u0352\u0353algo",
    "zero\u200bwidth\u00a0nbsp\ufeffbom",
    "trailing whitespace   \n  ",
    "'s 't 're 've 'm 'll 'd ''s",
    "1234567890 3.14159 -42 1e10",
    "\x01\x02\x7f control \x1b[0m",
]


@pytest.fixture(scope="module")
def sample_text() -> str:
    return _offline_text()[:150_000]


@pytest.fixture(scope="module")
def trained(sample_text) -> BpeTokenizer:
    return BpeTokenizer.from_text(sample_text, 400)


def random_unicode(rng: random.Random, n: int) -> str:
    """NUL-free random code points (no surrogates), weighted towards ASCII and the BMP."""
    out = []
    for _ in range(n):
        top = rng.choice([0x80, 0x800, 0x10000, 0x110000])
        c = rng.randrange(1, top)
        while 0xD800 <= c <= 0xDFFF:
            c = rng.randrange(1, top)
        out.append(chr(c))
    return "".join(out)


def plain_types(value) -> set:
    """Every type found in a nested state."""
    found = {type(value)}
    if isinstance(value, dict):
        for k, v in value.items():
            found |= plain_types(k) | plain_types(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            found |= plain_types(v)
    return found


def save_load(state: dict, tmp_path: Path) -> dict:
    path = tmp_path / "state.pt"
    torch.save({"tokenizer": state}, path)
    return torch.load(path, weights_only=True)["tokenizer"]


# ------------------------------------------------------------------------------------------------
# training


def naive_bpe(text: str, vocab_size: int) -> list[tuple[int, int]]:
    """Slow reference: recount every pair before each merge; same tie and skip rules."""
    words = [(list(p.encode("utf-8")), f) for p, f in Counter(regex.findall(PATTERN, text)).items()]
    vocab = [bytes([b]) for b in range(256)]
    merges, skipped = [], set()
    while len(merges) < vocab_size - 256:
        counts = Counter()
        for w, f in words:
            for pair in zip(w, w[1:]):
                if pair not in skipped:
                    counts[pair] += f
        if not counts:
            break
        best = min(counts, key=lambda p: (-counts[p], p))
        joined = vocab[best[0]] + vocab[best[1]]
        if joined in vocab:
            skipped.add(best)
            continue
        vocab.append(joined)
        merges.append(best)
        for k, (w, f) in enumerate(words):
            out, j = [], 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    out.append(len(vocab) - 1)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[k] = (out, f)
    return merges


def test_training_gives_the_merges_asked_for_deterministically(sample_text, trained):
    merges = train_bpe(sample_text, 400)
    assert len(merges) == 400 - 256
    assert merges == trained.merges  # same text, same merges
    assert trained.vocab_size == 400
    assert trained.dtype == np.uint16
    # merges only refer to earlier tokens and every token's bytes are distinct
    assert all(a < 256 + i and b < 256 + i for i, (a, b) in enumerate(merges))
    tokens = [trained.token_bytes(i) for i in range(400)]
    assert len(set(tokens)) == 400
    # frequent pieces are single tokens and the text shrinks a lot
    assert b" the" in tokens
    ids = trained.encode(sample_text)
    assert ids.dtype == np.uint16 and ids.max() < 400
    assert len(ids) < 0.6 * len(sample_text.encode("utf-8"))
    assert trained.decode(ids) == sample_text


def test_train_matches_naive_reference():
    texts = [
        "the cat sat on the mat; the hat, that hat!! 123 4567 aaaa aaa aa a bb bbb",
        "aaaaaaa aaaa aaaaa baaab abab ababab ba ba ba\n\n  \n x",
        _offline_text()[:3000],
        random_unicode(random.Random(1), 300),
    ]
    for text in texts:
        assert train_bpe(text, 256 + 60) == naive_bpe(text, 256 + 60)


def test_train_stops_when_nothing_is_left_and_reports_progress():
    calls = []
    merges = train_bpe("ab ab", 1000, progress=lambda done, total: calls.append((done, total)))
    # pieces "ab" and " ab": (97, 98) then (32, 256)
    assert merges == [(97, 98), (32, 256)]
    assert calls[0] == (0, 744) and calls[-1] == (2, 744)
    assert train_bpe("", 300) == [] and train_bpe("x", 256) == []

    calls.clear()
    train_bpe(_offline_text()[:5000], 256 + 40, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (40, 40) and len(calls) > 2
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


@pytest.mark.parametrize("bad", [255, 0, -1, 1.5, "300", True])
def test_vocab_size_below_256_is_refused(bad):
    with pytest.raises(ValueError, match=r"vocab_size must be an integer >= 256.*got"):
        train_bpe("some text", bad)
    with pytest.raises(ValueError, match=r"vocab_size"):
        BpeTokenizer.from_text("some text", bad)


# ------------------------------------------------------------------------------------------------
# round trips and states


def test_round_trip_is_exact_for_any_text(trained):
    rng = random.Random(0)
    texts = ROUND_TRIP_TEXTS + [random_unicode(rng, n) for n in (1, 2, 7, 50, 500, 3000)]
    for text in texts:
        ids = trained.encode(text)
        assert isinstance(ids, np.ndarray) and ids.dtype == np.uint16
        assert trained.decode(ids) == text, repr(text)
        assert trained.decode(ids.tolist()) == text
        assert trained.decode(torch.from_numpy(ids.astype(np.int64))) == text
        assert b"".join(trained.token_bytes(int(i)) for i in ids) == text.encode("utf-8")
    assert trained.encode("").shape == (0,)
    # no training at all: pure bytes
    raw = BpeTokenizer([])
    assert raw.vocab_size == 256 and raw.encode("é").tolist() == [0xC3, 0xA9]


def test_decode_of_bad_ids(trained):
    assert trained.decode(trained.encode("é")[:1]) == "\ufffd"  # half a character
    with pytest.raises(ValueError, match="400"):
        trained.decode([1, 400])
    with pytest.raises(ValueError, match=r"no token 400 \(vocab_size 400\)"):
        trained.token_bytes(400)


def test_state_is_plain_and_survives_weights_only_load(trained, sample_text, tmp_path):
    state = trained.state()
    assert state["kind"] == "bpe" and state["pattern"] == PATTERN
    assert state["merges"] == [list(m) for m in trained.merges]
    assert plain_types(state) <= {dict, list, str, int}
    loaded = save_load(state, tmp_path)
    assert loaded == state
    again = BpeTokenizer.from_state(loaded)
    assert again.merges == trained.merges and again.vocab_size == trained.vocab_size
    text = sample_text[:20_000] + ROUND_TRIP_TEXTS[7]
    assert np.array_equal(again.encode(text), trained.encode(text))


@pytest.mark.parametrize("state, message", [
    ({"kind": "char", "chars": "ab"}, "kind 'char' is not 'bpe'"),
    ({"merges": []}, "kind None"),
    ({"kind": "bpe"}, "no 'merges'"),
    ({"kind": "bpe", "merges": "nope"}, "list of"),
    ({"kind": "bpe", "merges": [[97, 98, 99]]}, "merge 0 must be a pair of ints"),
    ({"kind": "bpe", "merges": [["a", "b"]]}, "merge 0 must be a pair of ints"),
    ({"kind": "bpe", "merges": [[97, 98], [256, 257]]}, r"merge 1 .* does not exist yet"),
    ({"kind": "bpe", "merges": [[-1, 98]]}, "does not exist yet"),
    ({"kind": "bpe", "merges": [[97, 98], [97, 98]]}, r"already token 256"),
    ({"kind": "bpe", "merges": [], "pattern": 3}, "pattern must be a str"),
    ({"kind": "bpe", "merges": [], "pattern": "(unclosed"}, "pattern"),
])
def test_malformed_bpe_states_are_refused(state, message):
    with pytest.raises(ValueError, match=message):
        BpeTokenizer.from_state(state)


# ------------------------------------------------------------------------------------------------
# pre-built tiktoken encodings, offline


def write_tiktoken_file(path: Path, extra: list[bytes]) -> Path:
    """A made-up rank file in tiktoken's format: all 256 bytes, then ``extra``."""
    tokens = [bytes([b]) for b in range(256)] + extra
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))
    return path


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty tiktoken cache, no encodings loaded in-process, and downloads that fail at once."""
    import requests
    import tiktoken.registry

    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})

    def no_network(*args, **kwargs):
        raise requests.exceptions.ConnectionError("network disabled by the test")

    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setattr("socket.socket.connect", no_network)
    return cache


def test_missing_encoding_says_how_to_provide_it(offline):
    with pytest.raises(ValueError, match="'gpt2'") as info:
        TiktokenTokenizer.from_name("gpt2")
    message = str(info.value)
    assert "'gpt2'" in message and "TIKTOKEN_CACHE_DIR" in message
    assert "downloaded" in message and ".tiktoken" in message
    assert "https://openaipublic.blob.core.windows.net/" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no connection traceback

    with pytest.raises(ValueError, match=r"cl100k_base.*cl100k_base\.tiktoken"):
        TiktokenTokenizer.from_name("cl100k_base")
    with pytest.raises(ValueError, match="unknown tiktoken encoding 'nope'"):
        TiktokenTokenizer.from_name("nope")


def test_encoding_from_a_local_file(offline, tmp_path):
    path = write_tiktoken_file(tmp_path / "tiny.tiktoken", [b"th", b"the", b" the", b"in", b"ing"])
    tok = TiktokenTokenizer.from_name("gpt2", file=path)
    assert list(offline.iterdir()) == []  # the file was not copied into tiktoken's cache
    assert tok.kind == "tiktoken" and tok.name == "gpt2"
    assert tok.special_tokens == {"<|endoftext|>": 50256}
    assert tok.vocab_size == 50257 and tok.dtype == np.uint16
    ids = tok.encode("the thing")
    assert ids.tolist() == [257, 32, 256, 260]  # "the", " ", "th", "ing"
    assert tok.token_bytes(258) == b" the"
    # special tokens are never produced: their text is encoded as ordinary text
    assert 50256 not in tok.encode("a <|endoftext|> b").tolist()
    for text in ROUND_TRIP_TEXTS + [random_unicode(random.Random(2), 400), "a <|endoftext|> b"]:
        assert tok.decode(tok.encode(text)) == text

    state = tok.state()
    assert plain_types(state) <= {dict, list, str, int}
    again = TiktokenTokenizer.from_state(save_load(state, tmp_path))
    assert again.state() == state
    text = "the thing in the ring " + ROUND_TRIP_TEXTS[8]
    assert np.array_equal(again.encode(text), tok.encode(text))


def test_bad_local_files_and_states(offline, tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        TiktokenTokenizer.from_name("gpt2", file=tmp_path / "missing.tiktoken")
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"YQ== 0\nnot-a-line\n")
    with pytest.raises(ValueError, match="line 2"):
        TiktokenTokenizer.from_name("gpt2", file=bad)
    short = write_tiktoken_file(tmp_path / "short.tiktoken", [])
    short.write_bytes(b"\n".join(short.read_bytes().splitlines()[:200]))
    with pytest.raises(ValueError, match="single-byte"):
        TiktokenTokenizer.from_name("gpt2", file=short)
    dup = write_tiktoken_file(tmp_path / "dup.tiktoken", [b"ab", b"ab"])
    with pytest.raises(ValueError, match="more than once"):
        TiktokenTokenizer.from_name("gpt2", file=dup)

    good = TiktokenTokenizer.from_name("gpt2", file=write_tiktoken_file(tmp_path / "ok.tiktoken", []))
    state = good.state()
    with pytest.raises(ValueError, match="kind 'bpe' is not 'tiktoken'"):
        TiktokenTokenizer.from_state({**state, "kind": "bpe"})
    with pytest.raises(ValueError, match="lacks ranks"):
        TiktokenTokenizer.from_state({k: v for k, v in state.items() if k != "ranks"})
    with pytest.raises(ValueError, match="latin-1"):
        TiktokenTokenizer.from_state({**state, "ranks": state["ranks"][:-1] + ["€"]})
    with pytest.raises(ValueError, match="special token ids"):
        TiktokenTokenizer.from_state({**state, "special_tokens": {"<|x|>": 97}})
    with pytest.raises(ValueError, match="kind 'tiktoken' is not 'bpe'"):
        BpeTokenizer.from_state(state)


# ----------------------------------------------------------------------------- tokenizer: bpe in train.py


@pytest.mark.slow
def test_train_with_bpe_samples_from_the_checkpoint_alone_and_resumes(tmp_path):
    from helpers import cli, metrics, tiny

    from lm.checkpoint import load as load_checkpoint

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_offline_text()[:60_000], encoding="utf-8")
    out = tmp_path / "run"
    bpe = ["--tokenizer=bpe", "--vocab_size=300", "--max_iters=4", "--eval_interval=2"]
    done = cli("train.py", *tiny(corpus, out, *bpe))
    assert done.returncode == 0, done.stderr
    assert "tokenizer: learning a byte-level BPE of 300 tokens from the training split" in done.stdout
    ckpt = load_checkpoint(out / "last.pt")  # weights_only: the tokenizer state is plain values
    state = ckpt["tokenizer"]
    assert state["kind"] == "bpe" and len(state["merges"]) == 300 - 256
    # the token cache holds the training split encoded with the learned merges
    tok = BpeTokenizer.from_state(state)
    text = corpus.read_text(encoding="utf-8")
    n_train = int(len(text) * 0.9)
    cached = np.fromfile(out / "data" / "train.bin", dtype=tok.dtype)
    assert np.array_equal(cached, tok.encode(text[:n_train]))
    assert BpeTokenizer.from_text(text[:n_train], 300).merges == tok.merges  # learned from the training split
    # bits per character: nats per token x tokens per character / ln 2
    final = metrics(out)[-1]
    val_tokens = len(np.fromfile(out / "data" / "val.bin", dtype=tok.dtype))
    expected = final["final_val_loss"] * val_tokens / (len(text) - n_train) / np.log(2)
    assert final["final_val_bpc"] == pytest.approx(expected, rel=1e-9)
    assert final["final_val_bpc"] < final["final_val_loss"] / np.log(2)  # more than one character per token
    # sample.py needs only the checkpoint: a prompt with characters never seen in training round-trips
    done = cli("sample.py", "--checkpoint", out / "last.pt", "--prompt", "Zürich 🙂 ", "--max_new_tokens", "20",
               "--seed", "1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Zürich 🙂 ")
    done = cli("train.py", *tiny(corpus, out, *bpe[:-2], "--max_iters=6", "--eval_interval=2", "--resume"))
    assert done.returncode == 0, done.stderr
    assert "reused token cache" in done.stdout
    assert load_checkpoint(out / "last.pt")["tokenizer"] == state
    # another tokenizer cannot continue this run
    done = cli("train.py", *tiny(corpus, out, "--max_iters=8", "--resume", "--tokenizer=char"))
    assert done.returncode == 2
    assert "data.tokenizer: checkpoint has 'bpe', config has 'char'" in done.stderr


@pytest.mark.slow
def test_bpe_settings_are_checked(tmp_path):
    from helpers import cli, tiny

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_offline_text()[:20_000], encoding="utf-8")
    done = cli("train.py", *tiny(corpus, tmp_path / "a", "--tokenizer=bpe"))
    assert done.returncode == 2 and "vocab_size: 0" in done.stderr and "--vocab_size=1024" in done.stderr
    done = cli("train.py", *tiny(corpus, tmp_path / "b", "--tokenizer=wordpiece"))
    assert done.returncode == 2 and "choose one of: char, bpe, gpt2" in done.stderr
    done = cli("train.py", *tiny(corpus, tmp_path / "c", "--tokenizer=bpe", "--vocab_size=100000"))
    assert done.returncode == 2 and "only enough distinct byte pairs" in done.stderr


@pytest.mark.slow
def test_an_unavailable_tiktoken_encoding_is_a_clear_error_in_train_py(tmp_path):
    from helpers import cli, tiny

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(_offline_text()[:20_000], encoding="utf-8")
    dead_proxy = "http://127.0.0.1:9"  # no download even where the network is reachable
    env = {**__import__("os").environ, "TIKTOKEN_CACHE_DIR": str(tmp_path / "empty_cache"),
           "HTTPS_PROXY": dead_proxy, "HTTP_PROXY": dead_proxy, "https_proxy": dead_proxy, "http_proxy": dead_proxy}
    done = cli("train.py", *tiny(corpus, tmp_path / "run", "--tokenizer=gpt2"), env=env)
    assert done.returncode == 2, done.stderr
    assert "gpt2" in done.stderr and "TIKTOKEN_CACHE_DIR" in done.stderr
    assert "Traceback" not in done.stderr
