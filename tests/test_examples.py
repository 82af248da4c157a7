"""The examples a run shows at each evaluation (lm.jobs: Job.examples; train.py prints them under the
evaluation's line): their keys, the held-out set they come from, the model's mode kept, and each one what
sample.py prints for the checkpoint (seq2seq --input, task spell with its correction filter, a language
model's greedy continuation of the fixed prompt)."""

import copy
import os

import pytest
import torch

from conftest import offline_text
from helpers import cli, grid_reference

from lm import config
from lm.answers import answer
from lm.checkpoint import load, load_model
from lm.jobs import EXAMPLE_NEW_TOKENS, LanguageModelJob, Seq2SeqJob, make_job
from lm.nn.models import make_model

CPU = torch.device("cpu")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # tiny models: one thread is fastest
pytestmark = pytest.mark.usefixtures("one_thread")
SEQ2SEQ_KEYS = {"input", "prediction", "target", "right"}
LM_KEYS = {"prompt", "continuation", "max_new_tokens"}


def ignore(event):
    return None


def sample_prints(capsys, *args) -> str:
    """What `sample.py --checkpoint ... ARGS` prints on stdout (run in this process, on the CPU)."""
    import sample

    code = sample.main([*map(str, args), "--device=cpu"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


# ----------------------------------------------------------------------------- the jobs, on untrained models

def grid_text(grid) -> str:
    return "/".join("".join(str(int(c)) for c in row) for row in grid)


# each task's right answer to an input as sample.py takes it, worked out here from the text alone
ANSWERS = {"copy": lambda s: s,
           "reverse": lambda s: " ".join(s.split()[::-1]),
           "sort": lambda s: " ".join(sorted(s.split(), key=int)),
           "add": lambda s: str(sum(int(v) for v in s.split("+"))),
           "grid": lambda s: grid_text(grid_reference("rotate", [[int(c) for c in row] for row in s.split("/")]))}


@pytest.mark.parametrize("task", list(ANSWERS))
def test_seq2seq_examples_are_the_first_held_out_examples_as_text_and_the_mode_is_kept(task):
    cfg = config.load(None, [f"--task={task}", "--max_len=4", "--eval_long_len=5", "--held_out_size=6",
                             "--max_iters=5", "--block_size=32", "--num_blocks=1", "--num_heads=2",
                             "--embedding_dim=16", "--dropout=0.1"])
    job = Seq2SeqJob(cfg, None, None, ignore)
    cfg.model.vocab_size = job.vocab.vocab_size
    torch.manual_seed(0)
    model = make_model(cfg)  # in train mode, as the trainer holds it
    shown = job.examples(model, CPU, torch.float32, 4)
    assert model.training
    assert len(shown) == 4 and all(set(x) == SEQ2SEQ_KEYS for x in shown)
    t = job.task
    assert [x["input"] for x in shown] == [t.render(t.from_ids(s)) for s, _ in job.held_out[:4]]
    for x in shown:
        assert x["target"] == ANSWERS[task](x["input"]), x
        assert x["right"] == (x["prediction"] == x["target"])
        assert isinstance(x["right"], bool) and isinstance(x["prediction"], str)
    model.eval()
    again = job.examples(model, CPU, torch.float32, 4)
    assert not model.training and again == shown  # greedy, in eval mode: the same answers, dropout or not
    assert job.examples(model, CPU, torch.float32, 0) == []
    assert len(job.examples(model, CPU, torch.float32, 100)) == 6  # at most the held-out set


def lm_job(corpus, tmp_path, block_size=16):
    cfg = config.load(None, [f"--data_path={corpus}", f"--out_dir={tmp_path / 'out'}", f"--block_size={block_size}",
                             "--num_blocks=1", "--num_heads=2", "--embedding_dim=16", "--dropout=0.1"])
    job = LanguageModelJob(cfg, None, tmp_path / "out", ignore)
    cfg.model.vocab_size = job.vocab.vocab_size
    torch.manual_seed(0)
    return job, make_model(cfg)


def test_a_language_models_example_is_one_greedy_continuation_of_a_line_of_the_validation_split(small_corpus,
                                                                                                tmp_path):
    job, model = lm_job(small_corpus, tmp_path)
    shown = job.examples(model, CPU, torch.float32, 3)  # n > 1: still one continuation
    assert model.training
    [x] = shown
    assert set(x) == LM_KEYS and x["prompt"] == job.example_prompt()
    ids = job.vocab.encode(x["prompt"]).tolist()
    val = job.vocab.decode(job.corpus.val[:1024])
    assert "\n" + x["prompt"] in val and x["prompt"].strip()  # from a line start of the validation split
    assert 1 <= len(ids) <= 16 // 2 and x["max_new_tokens"] == 16 - len(ids)  # both fit in block_size
    assert len(x["continuation"]) == x["max_new_tokens"]  # char tokenizer: one character a token
    # the greedy continuation, worked out the slow way: the whole context through the model at each step
    model.eval()
    context = list(ids)
    with torch.no_grad():
        for _ in range(x["max_new_tokens"]):
            logits, _ = model(torch.tensor([context[-16:]]))
            context.append(int(logits[0, -1].argmax()))
    assert x["continuation"] == job.vocab.decode(context[len(ids):])
    assert job.examples(model, CPU, torch.float32, 1) == shown and not model.training
    assert job.examples(model, CPU, torch.float32, 0) == []


def test_the_prompt_is_the_first_whole_line_after_the_split_begins_or_its_text_without_lines(tmp_path):
    lines = [f"Line {i:04d}: a b c d\n" for i in range(500)]  # 19 characters each, one token a character
    (tmp_path / "lines.txt").write_text("".join(lines), encoding="utf-8")
    job, model = lm_job(tmp_path / "lines.txt", tmp_path / "a", block_size=64)  # prompts of up to 24 tokens
    val = job.vocab.decode(job.corpus.val[:100])
    first_break = val.index("\n")
    assert job.example_prompt() == val[first_break + 1 : val.index("\n", first_break + 1) + 1]
    assert job.example_prompt() in lines
    [x] = job.examples(model, CPU, torch.float32, 3)
    assert x["max_new_tokens"] == min(EXAMPLE_NEW_TOKENS, 64 - 19) == 45
    (tmp_path / "flat.txt").write_text("no line breaks here, " * 500, encoding="utf-8")
    job, _ = lm_job(tmp_path / "flat.txt", tmp_path / "b", block_size=64)
    assert job.example_prompt() == job.vocab.decode(job.corpus.val[:24])  # the split's first 24 tokens


def test_train_prints_each_example_on_a_line_under_the_evaluation(capsys):
    import train

    seq2seq = [{"input": "5 7 9 2", "prediction": "2 9 7 5", "target": "2 9 7 5", "right": True},
               {"input": "1 2 3", "prediction": "3 2 2", "target": "3 2 1", "right": False}]
    assert train.examples_text(seq2seq) == "  ✓ 5 7 9 2 -> 2 9 7 5\n  ✗ 1 2 3 -> 3 2 2 (target 3 2 1)"
    assert train.examples_text(seq2seq, "ascii") == "  ? 5 7 9 2 -> 2 9 7 5\n  ? 1 2 3 -> 3 2 2 (target 3 2 1)"
    lm = [{"prompt": "ROMEO:\n", "continuation": "I am\r\nhere\rnow\n", "max_new_tokens": 15}]
    assert train.examples_text(lm) == "  ROMEO:↵ -> I am↵here↵now↵"
    console = train.Console()
    event = {"event": "eval", "step": 10, "val_loss": 1.25, "best": True}
    for examples in (None, []):
        console({**event, **({} if examples is None else {"examples": examples})})
        assert capsys.readouterr().out == "step 10: val loss 1.2500 (best, saved best.pt)\n"
    console({**event, "examples": seq2seq})
    assert capsys.readouterr().out == ("step 10: val loss 1.2500 (best, saved best.pt)\n"
                                       "  ✓ 5 7 9 2 -> 2 9 7 5\n  ✗ 1 2 3 -> 3 2 2 (target 3 2 1)\n")


# ----------------------------------------------------------------------------- trained runs, against sample.py

def train_run(out, *args):
    r = cli("train.py", f"--out_dir={out}", "--num_blocks=1", "--num_heads=2", "--eval_iters=1", "--warmup_iters=2",
            "--device=cpu", "--dtype=float32", *args, env=ENV)
    assert r.returncode == 0, r.stderr
    return out


def job_of(checkpoint):
    """The model of a checkpoint, and its run's job (as a resumed run builds it)."""
    model, _, cfg = load_model(checkpoint)
    return model, make_job(cfg, load(checkpoint), checkpoint.parent, ignore)


@pytest.mark.slow
def test_reverse_examples_are_what_sample_prints_for_the_checkpoint(tmp_path, capsys):
    """A reverse model trained for 30 steps (about half of its held-out examples right, here): each
    example's prediction is what `sample.py --input` prints, with dropout on and the model handed over in
    train mode."""
    out = train_run(tmp_path / "reverse", "--task=reverse", "--min_len=1", "--max_len=4", "--eval_long_len=4",
                    "--held_out_size=8", "--block_size=8", "--batch_size=32", "--embedding_dim=16", "--lr=2e-2",
                    "--dropout=0.1", "--max_iters=30", "--eval_interval=30")
    best = out / "best.pt"
    model, job = job_of(best)
    model.train()
    shown = job.examples(model, CPU, torch.float32, 8)
    assert model.training and len(shown) == 8
    for x in shown:
        assert sample_prints(capsys, "--checkpoint", best, "--input", x["input"]) == x["prediction"] + "\n", x
        assert x["target"] == ANSWERS["reverse"](x["input"]) and x["right"] == (x["prediction"] == x["target"])
    r = cli("sample.py", "--checkpoint", best, "--input", shown[0]["input"], env=ENV)  # the real command line
    assert r.returncode == 0 and r.stdout == shown[0]["prediction"] + "\n", r.stderr


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_a_language_models_example_is_what_sample_prints_at_temperature_0(tmp_path, capsys, tokenizer):
    corpus = tmp_path / "small.txt"
    corpus.write_text(offline_text()[:20_000], encoding="utf-8")
    bpe = ["--tokenizer=bpe", "--vocab_size=300"] if tokenizer == "bpe" else []
    out = train_run(tmp_path / "lm", f"--data_path={corpus}", "--block_size=32", "--batch_size=4",
                    "--embedding_dim=16", "--max_iters=4", "--eval_interval=4", *bpe)
    best = out / "best.pt"
    model, job = job_of(best)
    [x] = job.examples(model, CPU, torch.float32, 3)
    assert len(job.vocab.encode(x["prompt"])) + x["max_new_tokens"] <= 32
    args = ["--checkpoint", best, f"--prompt={x['prompt']}", "--temperature", 0, "--max_new_tokens", x["max_new_tokens"]]
    assert sample_prints(capsys, *args) == x["prompt"] + x["continuation"] + "\n"
    r = cli("sample.py", *args, "--device=cpu", env=ENV)
    assert r.returncode == 0 and r.stdout == x["prompt"] + x["continuation"] + "\n", r.stderr


SENTENCES = ["The little boat sailed across the bay.", "Seven geese walked slowly past the mill.",
             "My brother painted the garden wall green.", "Every morning the baker opens his shop.",
             "A cold wind blew over the empty hills.", "She found an old letter under the stairs."]


@pytest.mark.slow
def test_spell_examples_correct_the_noisy_sentences_with_the_filter_as_sample_does(tmp_path, capsys):
    """A barely trained model writes non-words, which the known-word filter puts back: each prediction is
    sample.py's correction of the noisy sentence (filter applied), and with correction_filter none the
    model's raw output."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(SENTENCES * 40) + "\n", encoding="utf-8")
    out = train_run(tmp_path / "spell", "--task=spell", f"--data_path={corpus}", "--min_len=20", "--max_len=60",
                    "--block_size=64", "--embedding_dim=16", "--batch_size=8", "--held_out_size=4",
                    "--noise_edits=1", "--max_iters=4", "--eval_interval=4")
    best = out / "best.pt"
    model, job = job_of(best)
    shown = job.examples(model, CPU, torch.float32, 4)
    assert [x["input"] for x in shown] == job.noisy[:4] and [x["target"] for x in shown] == job.clean[:4]
    unfiltered = copy.deepcopy(job.cfg)
    unfiltered.data.correction_filter = "none"
    raw = [answer(model, job.task, unfiltered, x["input"], CPU) for x in shown]
    for x, r in zip(shown, raw):
        assert sample_prints(capsys, "--checkpoint", best, "--input", x["input"]) == x["prediction"] + "\n", x
        assert x["prediction"] == job.task.keep_known_changes(x["input"], r)
        assert x["right"] == (x["prediction"] == x["target"])
    assert any(x["prediction"] != r for x, r in zip(shown, raw)), "the filter changed nothing: a weak test"
    _, none_job = job_of(best)
    none_job.cfg.data.correction_filter = "none"
    assert [x["prediction"] for x in none_job.examples(model, CPU, torch.float32, 4)] == raw


@pytest.mark.slow
def test_the_examples_train_prints_at_a_step_are_what_sample_prints_for_its_kept_checkpoint(tmp_path):
    """End to end: the lines under step 20's evaluation in train.py's output are sample.py's answers on
    ckpt/step_000020.pt (and step 40's on step_000040.pt): the model's real predictions at that step."""
    out = tmp_path / "reverse"
    r = cli("train.py", f"--out_dir={out}", "--task=reverse", "--min_len=1", "--max_len=4", "--eval_long_len=4",
            "--held_out_size=8", "--block_size=8", "--batch_size=32", "--num_blocks=1", "--num_heads=2",
            "--embedding_dim=16", "--lr=2e-2", "--max_iters=40", "--eval_interval=1000", "--keep_every=20",
            "--show_examples=4", "--warmup_iters=2", "--device=cpu", "--dtype=float32", env=ENV)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    for step in (20, 40):
        at = next(i for i, line in enumerate(lines) if line.startswith(f"step {step}: "))
        shown = lines[at + 1 : at + 5]
        assert len(shown) == 4 and all(line.startswith(("  ✓ ", "  ✗ ")) for line in shown), lines[at : at + 6]
        for line in shown:
            source, prediction = line[4:].split(" -> ")
            prediction = prediction.split(" (target ")[0]
            s = cli("sample.py", "--checkpoint", out / "ckpt" / f"step_{step:06d}.pt", "--input", source, env=ENV)
            assert s.returncode == 0 and s.stdout == prediction + "\n", (step, line, s.stdout, s.stderr)
