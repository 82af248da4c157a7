"""sample.py as a user runs it: stopped by Ctrl-C, piped into a reader that quits early, fixed
seeds, and seq2seq inputs longer than the model was trained on."""

import os
import selectors
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, offline_text

# Limits, each a guard against a hang only (a run that works returns long before): on the 2-core CPU these
# tests were written on, busy with other jobs, a whole command (the copy model's 150 steps) takes about
# 15 s of CPU and sample.py's first output about 4 s; the limits leave room for a CPU 10x slower.
TIMEOUT = 600  # a whole train.py or sample.py command
FIRST_OUTPUT_S = 300  # from starting sample.py to its first bytes of text
EXIT_S = 120  # from the stop (SIGINT, the reader gone) to the exit: the interpreter's teardown
ENDLESS = "10000000"  # more tokens than any test waits for: the run is always cut short
# one intra-op thread (as conftest.one_thread): the models are tiny, and several threads stall on a busy CPU
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
pytestmark = pytest.mark.usefixtures("one_thread")  # and so in this process (reference_answer, sample.main)


def cli(script, *args, timeout=TIMEOUT):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def popen(*args):
    # a terminal's Ctrl-C reaches a program whose SIGINT is at its default; a test runner started in
    # the background may have it ignored, and a child would inherit that
    return subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def read_stdout(proc, n: int, what: str, limit: float = FIRST_OUTPUT_S) -> bytes:
    """The first n bytes proc writes to stdout, waiting at most limit seconds for them (a select on the
    pipe, then a read of what is there: never a read that blocks); fails naming what it waited for when
    they do not come in time, or when proc closes its stdout first."""
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + limit
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        while len(data) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not sel.select(left):
                pytest.fail(f"timed out after {limit:.0f} s waiting for {what} ({len(data)} of {n} bytes came: "
                            f"{data!r})")
            chunk = os.read(fd, n - len(data))
            if not chunk:
                proc.kill()
                pytest.fail(f"sample.py closed its stdout after {len(data)} of {n} bytes, before {what}: "
                            f"{proc.communicate(timeout=EXIT_S)[1].decode(errors='replace')}")
            data += chunk
    return data


def wait_exit(proc, what: str, limit: float = EXIT_S) -> tuple[bytes, bytes]:
    """The rest of proc's stdout and stderr once it has exited; fails if it is still running limit seconds on."""
    try:
        return proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        pass
    pytest.fail(f"sample.py was still running {limit:.0f} s after {what}")


TINY = ["--block_size=16", "--batch_size=4", "--num_blocks=1", "--num_heads=2", "--embedding_dim=16",
        "--eval_iters=1", "--max_iters=2", "--eval_interval=2", "--device=cpu"]


@pytest.fixture(scope="module")
def lm_checkpoint(tmp_path_factory):
    """Trained once for the module (the tests only read it), on the small corpus of conftest.small_corpus."""
    root = tmp_path_factory.mktemp("lm")
    corpus, out = root / "small.txt", root / "lm"
    corpus.write_text(offline_text()[:20_000], encoding="utf-8")
    r = cli("train.py", f"--data_path={corpus}", f"--out_dir={out}", *TINY)
    assert r.returncode == 0, r.stderr
    return out / "best.pt"


@pytest.fixture(scope="module")
def copy_checkpoint(tmp_path_factory):
    """A copy-task model trained once for the module on lengths 1..4, long enough to copy them (150 steps:
    held-out exact match 100% from step 100 on, about 8 s of CPU)."""
    out = tmp_path_factory.mktemp("copy") / "copy"
    r = cli("train.py", "--task=copy", "--min_len=1", "--max_len=4", "--eval_long_len=4", "--held_out_size=10",
            f"--out_dir={out}", *TINY, "--block_size=8", "--batch_size=32", "--lr=2e-2", "--max_iters=150",
            "--eval_interval=150")
    assert r.returncode == 0, r.stderr
    return out / "best.pt"


def reference_answer(checkpoint, text: str) -> str:
    """The checkpoint's greedy answer to the source text, decoded the slow way: the whole prefix through the
    decoder at every step (no cache), the most likely token each time, up to block_size tokens or EOS."""
    from lm.checkpoint import load_model
    from lm.data.tasks import BOS, EOS

    model, task, cfg = load_model(checkpoint)
    with torch.no_grad():
        memory = model.encode(torch.tensor([task.to_ids(task.parse(text))]))
        ys = [BOS]
        for _ in range(cfg.model.block_size):
            logits, _ = model.decode(torch.tensor([ys]), memory)
            token = int(logits[0, -1].argmax())
            if token == EOS:
                break
            ys.append(token)
    return task.render(task.from_ids(ys[1:]))


def assert_quiet(stderr: bytes):
    text = stderr.decode(errors="replace")
    for needle in ("Traceback", "Exception ignored", "BrokenPipeError", "KeyboardInterrupt"):
        assert needle not in text, text


def test_reader_closing_the_pipe_early_exits_quietly_with_141(lm_checkpoint):
    """`python sample.py ... | head -c 100`: the reader takes 100 bytes and goes away."""
    proc = popen("--checkpoint", lm_checkpoint, "--prompt", "The ", "--max_new_tokens", ENDLESS, "--seed", 1)
    try:
        head = read_stdout(proc, 100, "the first 100 bytes of text")
        proc.stdout.close()
        _, stderr = wait_exit(proc, "its reader closed the pipe")
    finally:
        proc.kill()
    assert head.startswith(b"The ")
    assert proc.returncode == 141, stderr
    assert_quiet(stderr)


@pytest.mark.slow
def test_ctrl_c_while_generating_exits_quietly_with_130(lm_checkpoint):
    """SIGINT after the first 50 bytes of a 5,000-token run (several seconds of generation): the run
    stops there, exits 130 and prints no traceback; one that went on to the end would print all 5,000."""
    many = 5000
    proc = popen("--checkpoint", lm_checkpoint, "--prompt", "The ", "--max_new_tokens", many, "--seed", 1)
    try:
        first = read_stdout(proc, 50, "the first 50 bytes of text")  # the prompt and some sampled text are out
        assert proc.poll() is None, "sample.py ended before it was interrupted"
        proc.send_signal(signal.SIGINT)
        rest, stderr = wait_exit(proc, "SIGINT")
    finally:
        proc.kill()
    assert first.startswith(b"The ")
    assert proc.returncode == 130, stderr
    assert_quiet(stderr)
    # a whole run prints the prompt, 5,000 characters (one token each: at least a byte) and a line break
    printed = len(first) + len(rest)
    assert printed < many, f"{printed} bytes: it went on generating after SIGINT"


@pytest.mark.slow
def test_same_seed_same_output_and_another_seed_differs(lm_checkpoint):
    args = ["--checkpoint", lm_checkpoint, "--prompt", "The ", "--max_new_tokens", 60, "--temperature", 1.0]
    a, b, c = (cli("sample.py", *args, "--seed", seed) for seed in (7, 7, 8))
    for r in (a, b, c):
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("The ") and len(r.stdout) == len("The ") + 60 + 1
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


@pytest.mark.slow
def test_input_longer_than_the_trained_lengths_warns_and_still_answers(copy_checkpoint):
    """The answer to a 6-symbol input is the model's own (what a slow greedy decoding of the checkpoint
    gives: not empty, not cut to the trained lengths), with a warning; a 4-symbol one is copied, unwarned."""
    long = cli("sample.py", "--checkpoint", copy_checkpoint, "--input", "1 2 3 4 5 6")
    assert long.returncode == 0, long.stderr
    assert "warning: the input has length 6" in long.stderr and "1..4" in long.stderr, long.stderr
    expected = reference_answer(copy_checkpoint, "1 2 3 4 5 6")
    assert expected.split(), "the model answers nothing: a model trained to copy 1..4 symbols should"
    assert long.stdout == expected + "\n"  # one line: the answer
    beam = cli("sample.py", "--checkpoint", copy_checkpoint, "--input", "1 2 3 4 5 6", "--beam", 3)
    assert beam.returncode == 0 and "warning: the input has length 6" in beam.stderr, beam.stderr
    assert beam.stdout.endswith("\n") and beam.stdout.split(), beam.stdout  # an answer, not an empty line
    assert all(t.isdigit() and int(t) < 10 for t in beam.stdout.split()), beam.stdout  # of the task's symbols
    within = cli("sample.py", "--checkpoint", copy_checkpoint, "--input", "1 2 3 4")
    assert within.returncode == 0, within.stderr
    assert "warning" not in within.stderr, within.stderr
    assert within.stdout == "1 2 3 4\n"  # a copy: what the model was trained to give


def test_input_length_is_counted_as_training_counts_it():
    """Symbols for copy/reverse/sort; for add, the digits of the longer operand, leading zeros not counted."""
    import sample
    from lm.data.tasks import make_task

    copy = make_task("copy", 10)
    assert sample.input_length(copy, copy.parse("5 7 9 2 0")) == 5
    add = make_task("add", 10, max_len=6)
    for text, length in (("1234+987", 4), ("1+98765", 5), ("0+0", 1), ("000012+3", 2), ("100000+1", 6)):
        assert sample.input_length(add, add.parse(text)) == length, text


@pytest.mark.slow
def test_num_samples_is_one_batch_and_sample_i_is_seed_plus_i(lm_checkpoint):
    """--num_samples 3 --seed 7 prints what --seed 7, 8 and 9 print one by one, SEPARATOR between; greedy
    (temperature 0) samples are the lone greedy sample. 40 new tokens pass block_size 16: cached steps,
    then the sliding window."""
    import sample

    args = ["--checkpoint", lm_checkpoint, "--prompt", "The ", "--max_new_tokens", 40, "--device", "cpu"]
    sampled = [*args, "--temperature", 1.0, "--top_k", 30]
    batch = cli("sample.py", *sampled, "--num_samples", 3, "--seed", 7)
    alone = [cli("sample.py", *sampled, "--seed", seed) for seed in (7, 8, 9)]
    for r in (batch, *alone):
        assert r.returncode == 0, r.stderr
    assert len({r.stdout for r in alone}) == 3  # three different samples
    assert batch.stdout == sample.SEPARATOR.join(r.stdout for r in alone)
    greedy = [*args, "--temperature", 0]
    batch, alone = cli("sample.py", *greedy, "--num_samples", 3), cli("sample.py", *greedy)
    assert batch.returncode == 0 and alone.returncode == 0, batch.stderr + alone.stderr
    assert batch.stdout == sample.SEPARATOR.join([alone.stdout] * 3)


def test_num_samples_calls_generate_once_with_a_batch(lm_checkpoint, monkeypatch, capsys):
    import sample

    calls, real_generate = [], sample.generate

    def recording_generate(model, idx, *args, **kwargs):
        calls.append(tuple(idx.shape))
        return real_generate(model, idx, *args, **kwargs)

    monkeypatch.setattr(sample, "generate", recording_generate)
    code = sample.main(["--checkpoint", str(lm_checkpoint), "--prompt", "The ", "--max_new_tokens", "5",
                        "--num_samples", "4", "--device", "cpu"])
    assert code == 0
    assert calls == [(4, len("The "))]  # one call, a (N, T) batch
    out = capsys.readouterr().out
    assert out.count(sample.SEPARATOR) == 3 and out.count("The ") >= 4
