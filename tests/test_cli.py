"""The real command-line programs, end to end, on tiny configs."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from helpers import TIMEOUT

TINY = """\
# a tiny model for tests
model:
  block_size: 16
  num_blocks: 1
  num_heads: 2
  embedding_dim: 16
train:
  batch_size: 4
  max_iters: 6
  eval_interval: 3
  eval_iters: 2
  log_interval: 2
  warmup_iters: 2
  device: cpu
  dtype: float32  # the same numbers on every machine (auto is bfloat16 on a CPU with native bf16)
"""


def run(script, *args, cwd=None, env=None, timeout=TIMEOUT):
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def tiny_config(tmp_path, small_corpus):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY + f"data:\n  data_path: {small_corpus}\n")
    return path


@pytest.mark.slow
def test_train_then_sample_end_to_end(tmp_path, tiny_config):
    out = tmp_path / "out"
    r = run("train.py", "--config", tiny_config, f"--out_dir={out}")
    assert r.returncode == 0, r.stderr
    assert "parameters" in r.stdout and "MFLOPs per token" in r.stdout
    assert "step 3: train loss" in r.stdout and "val loss" in r.stdout and "bits/char" in r.stdout
    assert "final, over the whole validation split: val loss" in r.stdout
    assert "train:" in r.stderr and "6/6" in r.stderr  # the tqdm bar
    assert {"last.pt", "best.pt", "metrics.jsonl"} <= {p.name for p in out.iterdir()}

    # sampling needs only the checkpoint: run it from an empty directory
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    args = ["--checkpoint", out / "best.pt", "--prompt", "ROMEO:", "--max_new_tokens", 30, "--temperature", 0.8,
            "--top_k", 40, "--top_p", 0.95, "--num_samples", 3, "--seed", 1]
    s1 = run("sample.py", *args, cwd=elsewhere)
    assert s1.returncode == 0, s1.stderr
    samples = s1.stdout.split("\n" + "-" * 40 + "\n")
    assert len(samples) == 3 and all(x.startswith("ROMEO:") and len(x.rstrip("\n")) >= 36 for x in samples)
    assert run("sample.py", *args, cwd=elsewhere).stdout == s1.stdout  # same seed, same text
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("First Citizen:\n" * 3)  # longer than block_size: the window slides
    greedy = [run("sample.py", "--checkpoint", out / "best.pt", "--temperature", 0, "--max_new_tokens", 40,
                  "--prompt_file", prompt_file, *flag) for flag in ([], ["--no_cache"])]
    assert greedy[0].returncode == 0, greedy[0].stderr
    assert greedy[0].stdout.startswith("First Citizen:\n" * 3) and greedy[0].stdout == greedy[1].stdout
    assert "the model sees only the last 16" in greedy[0].stderr


@pytest.mark.slow
def test_resume_from_the_command_line(tmp_path, tiny_config):
    out = tmp_path / "out"
    assert run("train.py", "--config", tiny_config, f"--out_dir={out}", "--lr_decay_iters=10").returncode == 0
    r = run("train.py", "--resume", f"--out_dir={out}", "--max_iters=10")
    assert r.returncode == 0, r.stderr
    assert "resuming from" in r.stdout and "at step 6" in r.stdout
    assert "train.max_iters: 6 -> 10" in r.stdout
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    # log and eval lines, then one final line: the first run's final line (step 6) is dropped on resume
    assert steps == [2, 3, 4, 6, 8, 9, 10, 10]


@pytest.mark.slow
def test_config_with_exactly_the_nine_keys_trains(tmp_path, small_corpus):
    cfg = tmp_path / "nine.yaml"
    cfg.write_text(f"batch_size: 8\nepochs: 0.02\nlr: 3e-4\ndata_path: {small_corpus}\nblock_size: 16\n"
                   f"num_heads: 2\nembedding_dim: 16\nnum_blocks: 1\nnum_workers: 2\n")
    r = run("train.py", "--config", cfg, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # one epoch = as many windows as the training split has tokens: 0.02 * 18,000 / 8 = 45 steps
    assert "45 steps of batch 8 x 1" in r.stdout
    assert (tmp_path / "out" / "shakespeare_char" / "best.pt").exists()


@pytest.mark.slow
def test_offline_default_corpus_falls_back_loudly(tmp_path):
    cfg = tmp_path / "offline.yaml"
    cfg.write_text(TINY.replace("max_iters: 6", "max_iters: 2"))
    # a dead proxy makes the download fail at once, as on a machine with no network
    r = run("train.py", "--config", cfg, cwd=tmp_path, env={"https_proxy": "http://127.0.0.1:9",
                                                              "HTTPS_PROXY": "http://127.0.0.1:9"})
    assert r.returncode == 0, r.stderr
    assert "OFFLINE FALLBACK CORPUS" in r.stderr and "python_docs" in r.stderr
    assert (tmp_path / "data" / "python_docs" / "input.txt").exists()


@pytest.mark.parametrize("args,needles", [
    (["--lr=abc"], ["lr", "'abc'", "a number"]),
    (["--num_heads=3"], ["embedding_dim", "divisible by num_heads (3)"]),
    (["--colour=red"], ["unknown key 'colour'"]),
    (["--data_path=/nonexistent/corpus.txt"], ["/nonexistent/corpus.txt", "does not exist"]),
    (["--resume"], ["no checkpoint to resume from", "does not exist"]),
    (["--resume", "--overwrite"], ["--resume (continue the run in out_dir) and --overwrite (replace it) contradict"]),
])
@pytest.mark.slow
def test_train_errors_are_clear_and_early(tmp_path, tiny_config, args, needles):
    r = run("train.py", "--config", tiny_config, f"--out_dir={tmp_path / 'o'}", *args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    for n in needles:
        assert n in r.stderr, (n, r.stderr)
    assert not (tmp_path / "o" / "last.pt").exists()


@pytest.mark.slow
def test_sample_errors_are_clear(tmp_path, tiny_config):
    out = tmp_path / "out"
    assert run("train.py", "--config", tiny_config, f"--out_dir={out}", "--max_iters=1").returncode == 0
    ck = out / "last.pt"
    cases = [
        (["--prompt", "ROMEO€✓"], ["not in the vocabulary", "'€'", "'✓'"]),
        (["--prompt", ""], ["prompt is empty"]),
        (["--temperature", "-1"], ["temperature"]),
        (["--top_p", "1.5"], ["top_p"]),
        (["--checkpoint", tmp_path / "nope.pt"], ["does not exist"]),
    ]
    for args, needles in cases:
        r = run("sample.py", "--checkpoint", ck, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, (args, r.stderr)
        for n in needles:
            assert n in r.stderr, (n, r.stderr)
    r = run("sample.py", "--checkpoint", ck, "--prompt", "ROMEO", "--max_new_tokens", 0)
    assert r.returncode == 0 and r.stdout == "ROMEO\n"


@pytest.mark.slow
def test_seq2seq_task_train_and_transduce(tmp_path):
    out = tmp_path / "rev"
    r = run("train.py", "--config", ROOT / "configs" / "reverse.yaml", f"--out_dir={out}", "--max_len=6",
            "--eval_long_len=7", "--block_size=8", "--max_iters=600", "--eval_interval=300", "--held_out_size=200",
            "--device=cpu", "--dtype=float32")  # float32 everywhere: what it learns in 600 steps is then the same
    assert r.returncode == 0, r.stderr
    assert "task: reverse" in r.stdout and "held-out exact match" in r.stdout and "longer exact match" in r.stdout
    ck = out / "best.pt"
    for source, variants in (("5 7 9 2", (["--beam", "1"], ["--beam", "4"], ["--beam", "4", "--no_cache"],
                                          ["--beam", "1", "--no_cache"])),
                             ("0 1 2 3 4 5", (["--beam", "1"], ["--beam", "4"])), ("8", (["--beam", "1"],)),
                             ("3 3 9", (["--beam", "4"],))):
        expected = " ".join(reversed(source.split()))
        for args in variants:
            s = run("sample.py", "--checkpoint", ck, "--input", source, *args)
            assert s.returncode == 0, s.stderr
            assert s.stdout == expected + "\n", (source, args, s.stdout)
    for args, needle in ((["--input", "5 x"], "not symbols: x"), ([], "give the source with --input"),
                         (["--prompt", "hi"], "give the source with --input"),
                         (["--input", "1 2", "--beam", "0"], "--beam 0")):
        s = run("sample.py", "--checkpoint", ck, *args)
        assert s.returncode == 2 and needle in s.stderr, (args, s.stderr)
