"""Large corpora (lm/data/corpus.py): directories and globs, streamed preparation in bounded memory,
progress and stopping, BPE learned from a bounded sample."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from conftest import offline_text
from helpers import cli
from lm import config
from lm.data.bpe import BpeTokenizer
from lm.data.corpus import (DataError, PreparationStopped, corpus_files, cut_point, obtain_corpus, prepare_corpus,
                       split_point)
from lm.trainer import HEARTBEAT_S, Interrupted, train

# text that is hard on piecewise encoding: blank lines, spaces before line breaks, CRLF, characters of
# 2-4 UTF-8 bytes (a read of a few bytes cuts them), lines with no break for a while
HARD = ("First line.\n\n\n  indented  \n\ttab\r\nCRLF line\r\n"
        "été naïve 漢字 👩‍👩‍👧 🙂 end\n" + "x" * 300 + "\n" + "words and more words " * 20 + "\n \n") * 20


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path


def decoded(corpus) -> str:
    return corpus.tokenizer.decode(corpus.train) + corpus.tokenizer.decode(corpus.val)


@pytest.fixture(scope="module")
def bpe() -> BpeTokenizer:
    return BpeTokenizer.from_text(offline_text()[:100_000] + HARD, 400)


# ----------------------------------------------------------------------------- which files

def test_a_directory_is_its_files_in_path_order_joined_by_line_breaks(tmp_path):
    root = tmp_path / "shards"
    write(root / "b.txt", "second file, no final break")
    write(root / "a.txt", "first file\n")
    write(root / "sub" / "c.txt", "third file in a subdirectory\n" * 5)
    write(root / ".hidden.txt", "never read\n")
    write(root / ".git" / "objects.txt", "never read either\n")
    assert corpus_files(root) == [root / "a.txt", root / "b.txt", root / "sub" / "c.txt"]
    corpus = prepare_corpus(root, tmp_path / "cache", 0.2, 4)
    expected = "first file\n" + "second file, no final break" + "\n" + "third file in a subdirectory\n" * 5
    assert decoded(corpus) == expected
    assert len(corpus.train) == split_point(len(expected), 0.2)
    assert corpus.val_chars == len(expected) - split_point(len(expected), 0.2)


def test_a_glob_takes_the_files_it_matches(tmp_path):
    write(tmp_path / "data" / "one.txt", "one " * 50 + "\n")
    write(tmp_path / "data" / "two.md", "not matched\n")
    write(tmp_path / "data" / "deeper" / "three.txt", "three " * 50 + "\n")
    flat = obtain_corpus(str(tmp_path / "data" / "*.txt"))
    assert flat.files == [tmp_path / "data" / "one.txt"] and flat.name == str(tmp_path / "data" / "*.txt")
    deep = obtain_corpus(str(tmp_path / "data" / "**" / "*.txt"))
    assert deep.files == [tmp_path / "data" / "deeper" / "three.txt", tmp_path / "data" / "one.txt"]
    corpus = prepare_corpus(deep.files, tmp_path / "cache", 0.1, 8)
    assert decoded(corpus) == "three " * 50 + "\n" + "one " * 50 + "\n"
    with pytest.raises(DataError, match="matches no files .only 1 directories"):
        obtain_corpus(str(tmp_path / "dat[a]"))


def test_the_cache_follows_every_file(tmp_path):
    root = tmp_path / "shards"
    write(root / "a.txt", "alpha " * 100)
    write(root / "b.txt", "beta " * 100)
    cache = tmp_path / "cache"
    assert not prepare_corpus(root, cache, 0.1, 8).reused_cache
    assert prepare_corpus(root, cache, 0.1, 8).reused_cache
    write(root / "b.txt", "gamma " * 100)
    assert decoded(prepare_corpus(root, cache, 0.1, 8)).endswith("gamma ")
    write(root / "c.txt", "delta " * 100)
    again = prepare_corpus(root, cache, 0.1, 8)
    assert not again.reused_cache and decoded(again).endswith("delta ")
    assert len(json.loads((cache / "meta.json").read_text())["fingerprint"]["files"]) == 3


# ----------------------------------------------------------------------------- streamed = whole

@pytest.mark.parametrize("read_bytes", [1, 7, 64, 1000])
def test_piecewise_encoding_gives_the_ids_of_the_whole_split(tmp_path, bpe, read_bytes):
    path = write(tmp_path / "hard.txt", HARD)
    n = split_point(len(HARD), 0.1)
    char = prepare_corpus(path, tmp_path / f"char{read_bytes}", 0.1, 8, read_bytes=read_bytes)
    assert decoded(char) == HARD and np.array_equal(char.train, char.tokenizer.encode(HARD[:n]))
    pieces = prepare_corpus(path, tmp_path / f"bpe{read_bytes}", 0.1, 8, tokenizer=bpe, read_bytes=read_bytes)
    assert np.array_equal(pieces.train, bpe.encode(HARD[:n])) and np.array_equal(pieces.val, bpe.encode(HARD[n:]))


def test_cut_point_is_before_a_break_that_follows_a_letter_or_digit():
    assert cut_point("abc\ndef\n") == 7
    assert cut_point("abc\ndef  \n") == 3
    assert cut_point("abc\n\n\n") == 3
    assert cut_point("abc\r\ndef\r\n") == 8  # before the \r of \r\n
    assert cut_point("one 1\nend.\n") == 5  # not after punctuation, which cl100k joins to line breaks
    assert cut_point("\n\n  \n") == 0
    assert cut_point("no break at all") == 0


# punctuation, quotes, spaces and CRLF before line breaks: the cases where patterns differ
PUNCTUATED = ("Hello.\nWorld\nend:\n\nnext a'\nb \r\nCRLF line\r\n42\r\n\r\nx\n 9\n" * 30
              + "été 漢字 👩‍👩‍👧 end.\r\n") * 10


@pytest.mark.parametrize("encoding", ["gpt2", "cl100k_base", "o200k_base"])
def test_piecewise_encoding_is_exact_under_tiktokens_patterns(tmp_path, encoding):
    """tiktoken's encodings need files that are not here offline; their pre-tokenising patterns are what
    decides where a piece may be cut, so learned merges are used with each encoding's pattern."""
    from lm.data.bpe import _encoding_specs

    pattern = _encoding_specs()[encoding]["pat_str"]
    merges = BpeTokenizer.from_text(PUNCTUATED + HARD, 400).merges
    # tokens that only these patterns can produce (punctuation joined to a line break), so that a cut
    # between the two would change the ids
    vocab = {BpeTokenizer(merges).token_bytes(i) for i in range(256 + len(merges))}
    merges += [pair for pair in [(ord("."), 10), (ord(":"), 10), (ord("'"), 10), (13, 10)]
               if bytes(pair) not in vocab]
    tok = BpeTokenizer(merges, pattern)
    for name, text in (("mixed", PUNCTUATED + HARD), ("crlf", "Line one.\r\nline 2\r\n\r\n" * 500)):
        path = write(tmp_path / f"{name}.txt", text)
        n = split_point(len(text), 0.1)
        for read_bytes in (5, 64):
            corpus = prepare_corpus(path, tmp_path / f"{name}{read_bytes}", 0.1, 8, tokenizer=tok,
                                    read_bytes=read_bytes)
            assert np.array_equal(corpus.train, tok.encode(text[:n])), (name, read_bytes)
            assert np.array_equal(corpus.val, tok.encode(text[n:])), (name, read_bytes)


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_a_crlf_corpus_is_cut_at_its_line_breaks(tmp_path, monkeypatch, bpe, tokenizer):
    import lm.data.corpus

    held = []
    add = lm.data.corpus._SplitWriter.add
    monkeypatch.setattr(lm.data.corpus._SplitWriter, "add", lambda self, text: (add(self, text), held.append(len(self.held))))
    text = "a line\r\n" * 10_000
    corpus = prepare_corpus(write(tmp_path / "crlf.txt", text), tmp_path / "cache", 0.1, 8, read_bytes=1000,
                            tokenizer=bpe if tokenizer == "bpe" else None)
    assert decoded(corpus) == text
    # what waits for the next piece: nothing (characters), the end of one line (BPE), not the whole text
    assert max(held) == 0 if tokenizer == "char" else 0 < max(held) < 20


def test_text_without_line_breaks_is_cut_when_too_much_is_held(tmp_path, monkeypatch, bpe):
    import lm.data.corpus

    monkeypatch.setattr(lm.data.corpus, "MAX_CARRY", 100)
    held = []
    add = lm.data.corpus._SplitWriter.add
    monkeypatch.setattr(lm.data.corpus._SplitWriter, "add", lambda self, text: (add(self, text), held.append(len(self.held))))
    text = "abcdefghij" * 1000  # no line break at all
    corpus = prepare_corpus(write(tmp_path / "one_line.txt", text), tmp_path / "cache", 0.1, 8, read_bytes=30,
                            tokenizer=bpe)
    assert decoded(corpus) == text and max(held) < 100


# ----------------------------------------------------------------------------- bad files, named

def test_invalid_utf8_in_a_later_file_names_it_and_the_byte_offset(tmp_path):
    write(tmp_path / "shards" / "a.txt", "fine text\n" * 100)
    bad = tmp_path / "shards" / "b.txt"
    bad.write_bytes("é".encode() * 1000 + b"\xff" + b"more")
    for read_bytes in (3, 4096):  # the bad byte inside a read, and a character cut by a read
        with pytest.raises(DataError) as e:
            prepare_corpus(tmp_path / "shards", tmp_path / "cache", 0.1, 8, read_bytes=read_bytes)
        assert "b.txt" in str(e.value) and "byte offset 2000" in str(e.value) and "0xff" in str(e.value)
    cut = tmp_path / "cut.txt"
    cut.write_bytes(b"x" * 100 + "é".encode()[:1])
    with pytest.raises(DataError, match="byte offset 100"):
        prepare_corpus(cut, tmp_path / "cache", 0.1, 8, read_bytes=16)


def test_nul_names_the_file_and_its_character(tmp_path):
    write(tmp_path / "shards" / "a.txt", "fine text\n" * 100)
    write(tmp_path / "shards" / "b.txt", "ééé" * 10 + "\0" + "rest")
    with pytest.raises(DataError, match=r"b.txt' holds a NUL character at character 30"):
        prepare_corpus(tmp_path / "shards", tmp_path / "cache", 0.1, 8, read_bytes=5)


def test_all_empty_files_named_as_the_user_named_them(tmp_path):
    write(tmp_path / "shards" / "a.txt", "")
    write(tmp_path / "shards" / "b.txt", "")
    with pytest.raises(DataError, match="its 2 files are all empty"):
        prepare_corpus(tmp_path / "shards", tmp_path / "cache", 0.1, 8)
    with pytest.raises(DataError, match=f"data_path '{tmp_path / 'shards'}/\\*.txt': its 2 files are all empty"):
        train(tiny_config(tmp_path, f"{tmp_path / 'shards'}/*.txt"))


def test_no_line_break_is_added_after_the_last_text(tmp_path):
    write(tmp_path / "shards" / "a.txt", "text without a final break " * 10)
    write(tmp_path / "shards" / "b.txt", "")  # empty files after it add nothing
    assert decoded(prepare_corpus(tmp_path / "shards", tmp_path / "cache", 0.1, 8)) == "text without a final break " * 10


def test_a_file_that_changes_while_it_is_prepared_is_refused(tmp_path):
    path = write(tmp_path / "growing.txt", "a line of text\n" * 1000)
    cache = tmp_path / "cache"

    def append_once(event):
        if event["stage"] == "encode" and event["done"] == 2000:
            with open(path, "a", encoding="utf-8") as f:
                f.write("more text arrives\n")

    with pytest.raises(DataError, match="changed while it was being prepared"):
        prepare_corpus(path, cache, 0.1, 8, progress=append_once, read_bytes=1000)
    assert not (cache / "meta.json").exists() and not list(cache.glob(".*tmp*"))
    assert decoded(prepare_corpus(path, cache, 0.1, 8)).endswith("more text arrives\n")


def test_temporaries_of_a_killed_preparation_are_removed(tmp_path):
    import os

    cache = tmp_path / "cache"
    dead, live = cache / ".train.bin.tmp-999999999", cache / f".val.bin.tmp-{os.getppid()}"  # pytest's parent
    for f in (dead, live):
        write(f, "half-written ids")
    prepare_corpus(write(tmp_path / "c.txt", "some text\n" * 100), cache, 0.1, 8)
    assert not dead.exists() and live.exists()  # a live process may be writing its own


# ----------------------------------------------------------------------------- bounded memory

def peak_allocated(path: Path, cache: Path, read_bytes: int) -> int:
    tracemalloc.start()  # numpy's arrays are traced too
    try:
        prepare_corpus(path, cache, 0.1, 8, read_bytes=read_bytes)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_by_the_read_size_not_the_corpus(tmp_path):
    line = "To be, or not to be, that is the question: été 漢字\n"
    small = write(tmp_path / "small.txt", line * (2_000_000 // len(line)))
    large = write(tmp_path / "large.txt", line * (16_000_000 // len(line)))
    read = 256 << 10
    peak_small = peak_allocated(small, tmp_path / "s", read)
    peak_large = peak_allocated(large, tmp_path / "l", read)
    # a whole-file read of the large corpus alone would be 64 MB (its str: 4 bytes a character)
    assert peak_large < 16 << 20, peak_large
    assert peak_large < 1.25 * peak_small, (peak_small, peak_large)


# ----------------------------------------------------------------------------- progress and stopping

def test_progress_covers_every_byte_of_both_passes(tmp_path):
    root = tmp_path / "shards"
    for k in range(3):
        write(root / f"{k}.txt", f"shard {k}\n" * 300)
    total = sum(p.stat().st_size for p in root.iterdir())
    events = []
    prepare_corpus(root, tmp_path / "cache", 0.1, 8, progress=events.append, read_bytes=500)
    for stage in ("scan", "encode"):
        done = [e["done"] for e in events if e["stage"] == stage]
        assert done[0] == 0 and done[-1] == total and done == sorted(done) and len(done) > 10
        assert {e["total"] for e in events if e["stage"] == stage} == {total}
    assert [e["stage"] for e in events].index("encode") > max(i for i, e in enumerate(events) if e["stage"] == "scan")


@pytest.mark.parametrize("stage", ["scan", "encode"])
def test_a_stopped_preparation_leaves_nothing_and_the_next_one_works(tmp_path, stage):
    path = write(tmp_path / "corpus.txt", "some text to encode\n" * 500)
    cache = tmp_path / "cache"
    prepare_corpus(path, cache, 0.1, 8)  # an older cache, which the stop must not leave vouched for
    write(path, "a different text now\n" * 500)

    def stop_midway(event):
        if event["stage"] == stage and event["done"] > 2000:
            raise PreparationStopped

    with pytest.raises(PreparationStopped):
        prepare_corpus(path, cache, 0.1, 8, progress=stop_midway, read_bytes=1000)
    assert not list(cache.glob(".*tmp*"))  # no half-written file
    if stage == "encode":  # the old cache's files were being replaced: nothing vouches for them
        assert not (cache / "meta.json").exists()
    corpus = prepare_corpus(path, cache, 0.1, 8)
    assert not corpus.reused_cache and decoded(corpus) == "a different text now\n" * 500


def tiny_config(tmp_path: Path, data_path, *extra: str) -> config.Config:
    return config.load(None, [f"--data_path={data_path}", f"--out_dir={tmp_path / 'run'}", "--max_iters=2",
                              "--block_size=8", "--num_blocks=1", "--num_heads=1", "--embedding_dim=16",
                              "--batch_size=2", "--eval_interval=2", "--eval_iters=1", "--device=cpu", *extra])


def test_train_stops_during_preparation_on_request(tmp_path):
    path = write(tmp_path / "corpus.txt", "a corpus that takes a while\n" * 20_000)
    asked = []

    def should_stop():
        asked.append(1)
        return True

    with pytest.raises(Interrupted, match="stopped during data preparation"):
        train(tiny_config(tmp_path, path), should_stop=should_stop)
    assert len(asked) == 1  # at the first progress event, not after the whole preparation
    assert not (tmp_path / "run" / "data" / "meta.json").exists()
    assert not list((tmp_path / "run").glob("*.pt"))


def test_bpe_is_learned_from_a_bounded_evenly_spread_sample(tmp_path, monkeypatch, one_thread):
    # three files of one repeated word each; a sample of 5 pieces of 1,000 characters, evenly spread over
    # the training split, sees all three: the 15 merges asked for make each word (with its space) one token
    import lm.data.corpus
    from lm.checkpoint import load
    from lm.data.tokenizer import tokenizer_from_state

    monkeypatch.setattr(lm.data.corpus, "SAMPLE_PIECE", 1000)
    root = tmp_path / "shards"
    for k, word in enumerate(["alpha", "bravo", "delta"]):
        write(root / f"{k}.txt", f"{word}{k} " * 5000 + "\n")
    events = []
    cfg = tiny_config(tmp_path, root, "--tokenizer=bpe", "--vocab_size=271", "--tokenizer_sample=5000",
                      "--val_fraction=0.05", "--dtype=float32", "--max_iters=40", "--lr=1e-2", "--eval_interval=40")
    summary = train(cfg, on_event=events.append)
    message = next(e["message"] for e in events if e["event"] == "tokenizer")
    assert "from 5,000 characters of the training split (99,752), in 5 evenly spaced pieces" in message
    assert {e["stage"] for e in events if e["event"] == "prepare"} == {"scan", "bpe", "encode"}
    merges = [e for e in events if e["event"] == "prepare" and e["stage"] == "bpe"]
    assert merges[-1]["done"] == merges[-1]["total"] == 15
    tok = tokenizer_from_state(load(tmp_path / "run" / "last.pt")["tokenizer"])
    assert [len(tok.encode(f" {word}")) for word in ("alpha", "bravo", "delta")] == [1, 1, 1]
    # the final loss is the checkpoint's over the whole validation split (float32: to 1e-5); 40 steps take it
    # well below the uniform log(271) = 5.6, so tokens left out or counted twice would show (a model near
    # uniform loses about as much on every token)
    by_hand = val_loss_by_hand(tmp_path / "run", root)
    assert summary["final_val_loss"] == pytest.approx(by_hand, rel=1e-5)
    assert by_hand < 0.5 * np.log(271)


def val_loss_by_hand(run: Path, root: Path) -> float:
    """The mean loss of run's last.pt over every token of its validation split but the first, computed here: the
    split (data/val.bin) checked to decode to the corpus's tail past the 99,752 training characters, cut into
    consecutive block_size windows, each token's -log p of the next summed in float64, one window at a time."""
    import torch

    from lm.checkpoint import load_model

    model, tok, cfg = load_model(run / "last.pt")
    meta = json.loads((run / "data" / "meta.json").read_text())
    val = np.fromfile(run / "data" / "val.bin", dtype=meta["dtype"]).astype(np.int64)
    text = "".join(path.read_text(encoding="utf-8") for path in sorted(root.glob("*.txt")))
    assert tok.decode(val.tolist()) == text[99_752:]
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(val) - 1, cfg.model.block_size):
            window = torch.from_numpy(val[start : start + cfg.model.block_size + 1])
            logits = model(window[None, :-1])[0][0].double()
            total -= torch.log_softmax(logits, -1).gather(1, window[1:, None]).sum().item()
            count += len(window) - 1
    assert count == len(val) - 1
    return total / count


def test_the_main_process_sends_heartbeats_while_it_prepares(monkeypatch, tmp_path):
    """lm.trainer._prepare_data with a stand-in for the process group: the others wait through a loop of
    small collectives, which the main process joins at least every HEARTBEAT_S of its preparation."""
    import lm.trainer as trainer

    class FakeWorld:
        def __init__(self, rank, answers=()):
            self.rank, self.size, self.is_main, self.calls, self.answers = rank, 2, rank == 0, [], list(answers)

        def sum(self, values):
            self.calls.append(list(values))
            return self.answers.pop(0) if self.answers else list(values)

    clock = [0.0]
    monkeypatch.setattr(trainer.time, "monotonic", lambda: clock[0])

    def slow_preparation(cfg, saved, out_dir, emit, should_stop=lambda: False):
        for _ in range(10):  # ten stages of 25 s each
            clock[0] += 25.0
            should_stop()
        return "job"

    monkeypatch.setattr(trainer, "prepare_job", slow_preparation)
    main = FakeWorld(0)
    assert trainer._prepare_data(None, None, tmp_path, print, main, lambda: False) == "job"
    # 250 s with a check every 25 s: a heartbeat at 75, 150 and 225 s (HEARTBEAT_S = 60), then "done"
    assert HEARTBEAT_S == 60.0 and main.calls == [[0.0, 0.0]] * 3 + [[1.0, 0.0]]
    other = FakeWorld(1, answers=[[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]])
    assert trainer._prepare_data(None, None, tmp_path, print, other, lambda: False) == "job"
    assert len(other.calls) == 3
    stopped = FakeWorld(1, answers=[[0.0, 0.0], [1.0, 1.0]])
    assert trainer._prepare_data(None, None, tmp_path, print, stopped, lambda: False) is None
    # the main process fails: it tells the others, which stop with a short error of their own
    def failing_preparation(*args, **kwargs):
        raise DataError("data_path 'x' is empty")

    monkeypatch.setattr(trainer, "prepare_job", failing_preparation)
    main = FakeWorld(0)
    with pytest.raises(DataError, match="is empty"):
        trainer._prepare_data(None, None, tmp_path, print, main, lambda: False)
    assert main.calls == [[1.0, 2.0]]
    with pytest.raises(trainer.TrainingError, match="main process .rank 0. failed while preparing the data"):
        trainer._prepare_data(None, None, tmp_path, print, FakeWorld(1, answers=[[1.0, 2.0]]), lambda: False)


# ----------------------------------------------------------------------------- train.py

def test_train_cli_on_a_glob_reports_files_and_progress(tmp_path):
    for k in range(3):
        write(tmp_path / "shards" / f"{k}.txt", offline_text()[k * 30_000:(k + 1) * 30_000])
    result = cli("train.py", f"--data_path={tmp_path / 'shards'}/*.txt", f"--out_dir={tmp_path / 'run'}",
                 "--max_iters=2", "--eval_interval=2", "--eval_iters=1", "--num_blocks=1", "--embedding_dim=32",
                 "--num_heads=2", "--batch_size=4", "--device=cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"data: {tmp_path / 'shards'}/*.txt (3 files, encoded)" in result.stdout


def test_preparation_progress_in_a_log(monkeypatch):
    """Not a terminal: a line at each tenth of a long stage, at its end, and none for a quick one."""
    import io

    import train as cli

    clock = [0.0]
    monkeypatch.setattr(cli.time, "monotonic", lambda: clock[0])
    out = io.StringIO()
    long = cli.StageProgress("encode", 100 << 20, out)
    for k in range(101):  # 100 s at 1 MiB a second
        clock[0] = float(k)
        long.update(k << 20)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10 and lines[0].startswith("data: encoding 10.0 / 100.0 MiB (10%), 10 s elapsed, ~90 s left")
    assert lines[-1] == "data: encoding 100.0 / 100.0 MiB (100%), 100 s elapsed"
    quick = io.StringIO()
    short = cli.StageProgress("bpe", 256, quick)
    for k in range(0, 257, 16):
        clock[0] += 0.1
        short.update(k)
    assert quick.getvalue() == ""
    grown = io.StringIO()  # files that grew after they were measured: the end is shown once
    over = cli.StageProgress("scan", 100, grown)
    for done in (50, 100, 110, 120):
        clock[0] += 10.0
        over.update(done)
    assert [line.split("(")[1].split(")")[0] for line in grown.getvalue().splitlines()] == ["50%", "100%"]
