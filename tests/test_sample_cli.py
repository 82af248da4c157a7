"""sample.py as a user runs it: stopped by Ctrl-C, piped into a reader that quits early, fixed
seeds, and seq2seq inputs longer than the model was trained on."""

import signal
import subprocess
import sys

import pytest

from conftest import ROOT, offline_text

TIMEOUT = 120
ENDLESS = "10000000"  # more tokens than any test waits for: the run is always cut short


def cli(script, *args, timeout=TIMEOUT):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def popen(*args):
    # a terminal's Ctrl-C reaches a program whose SIGINT is at its default; a test runner started in
    # the background may have it ignored, and a child would inherit that
    return subprocess.Popen([sys.executable, str(ROOT / "sample.py"), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


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


@pytest.fixture
def copy_checkpoint(tmp_path):
    """A copy-task model trained on lengths 1..4."""
    out = tmp_path / "copy"
    r = cli("train.py", "--task=copy", "--min_len=1", "--max_len=4", "--eval_long_len=4", "--held_out_size=10",
            f"--out_dir={out}", *TINY, "--block_size=8")
    assert r.returncode == 0, r.stderr
    return out / "best.pt"


def assert_quiet(stderr: bytes):
    text = stderr.decode(errors="replace")
    for needle in ("Traceback", "Exception ignored", "BrokenPipeError", "KeyboardInterrupt"):
        assert needle not in text, text


def test_reader_closing_the_pipe_early_exits_quietly_with_141(lm_checkpoint):
    """`python sample.py ... | head -c 100`: the reader takes 100 bytes and goes away."""
    proc = popen("--checkpoint", lm_checkpoint, "--prompt", "The ", "--max_new_tokens", ENDLESS, "--seed", 1)
    try:
        head = proc.stdout.read(100)
        proc.stdout.close()
        proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        proc.kill()
    assert head.startswith(b"The ") and len(head) == 100
    assert proc.returncode == 141, stderr
    assert_quiet(stderr)


def test_ctrl_c_while_generating_exits_quietly_with_130(lm_checkpoint):
    proc = popen("--checkpoint", lm_checkpoint, "--prompt", "The ", "--max_new_tokens", ENDLESS, "--seed", 1)
    try:
        first = proc.stdout.read(50)  # it is generating: the prompt and some sampled text are out
        proc.send_signal(signal.SIGINT)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert first.startswith(b"The ") and len(first) == 50
    assert proc.returncode == 130, stderr
    assert_quiet(stderr)
    assert len(first + rest) < int(ENDLESS)  # stopped early, not run to the end


def test_same_seed_same_output_and_another_seed_differs(lm_checkpoint):
    args = ["--checkpoint", lm_checkpoint, "--prompt", "The ", "--max_new_tokens", 60, "--temperature", 1.0]
    a, b, c = (cli("sample.py", *args, "--seed", seed) for seed in (7, 7, 8))
    for r in (a, b, c):
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("The ") and len(r.stdout) == len("The ") + 60 + 1
    assert a.stdout == b.stdout
    assert a.stdout != c.stdout


def test_input_longer_than_the_trained_lengths_warns_and_still_answers(copy_checkpoint):
    long = cli("sample.py", "--checkpoint", copy_checkpoint, "--input", "1 2 3 4 5 6")
    assert long.returncode == 0, long.stderr
    assert "warning: the input has length 6" in long.stderr and "1..4" in long.stderr, long.stderr
    assert long.stdout.strip() == "" or all(t.isdigit() for t in long.stdout.split())
    assert long.stdout.endswith("\n")  # the output line is still printed
    beam = cli("sample.py", "--checkpoint", copy_checkpoint, "--input", "1 2 3 4 5 6", "--beam", 3)
    assert beam.returncode == 0 and "warning: the input has length 6" in beam.stderr, beam.stderr
    within = cli("sample.py", "--checkpoint", copy_checkpoint, "--input", "1 2 3 4")
    assert within.returncode == 0, within.stderr
    assert "warning" not in within.stderr, within.stderr


def test_input_length_is_counted_as_training_counts_it():
    """Symbols for copy/reverse/sort; for add, the digits of the longer operand, leading zeros not counted."""
    import sample
    from lm.tasks import make_task

    copy = make_task("copy", 10)
    assert sample.input_length(copy, copy.parse("5 7 9 2 0")) == 5
    add = make_task("add", 10, max_len=6)
    for text, length in (("1234+987", 4), ("1+98765", 5), ("0+0", 1), ("000012+3", 2), ("100000+1", 6)):
        assert sample.input_length(add, add.parse(text)) == length, text


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
