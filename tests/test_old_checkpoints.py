"""Checkpoints written by an earlier commit (d241b62, before the block's norms were renamed and lm/ was split
into subpackages) still load, compute the logits that commit computed, and work in every program:
sample.py, visualize.py and train.py --resume. The files and how they were made: tests/fixtures/d241b62/."""

import json

import pytest
import torch

from conftest import ROOT
from helpers import cli, metrics
from lm.checkpoint import load, load_model
from lm.nn.block import RENAMED, current_name

OLD = ROOT / "tests" / "fixtures" / "d241b62"


def old_inputs(name, vocab_size):
    """The fixed inputs the logits in logits.pt were computed on (by that commit's code)."""
    g = torch.Generator().manual_seed(0)
    if name == "char":
        return (torch.randint(0, vocab_size, (2, 10), generator=g),)
    return torch.randint(3, vocab_size, (2, 5), generator=g), torch.randint(3, vocab_size, (2, 6), generator=g)


@pytest.mark.parametrize("name", ["char", "copy"])
def test_an_old_checkpoint_loads_with_its_weights_and_logits(name):
    path = OLD / f"{name}.pt"
    saved = load(path)["model"]
    assert any(old in key for key in saved for old in RENAMED)  # written under the old parameter names
    model, _, cfg = load_model(path, torch.device("cpu"))
    state = model.state_dict()
    renamed = {current_name(key): value for key, value in saved.items()}
    assert state.keys() == renamed.keys()
    assert all(torch.equal(state[k], renamed[k]) for k in state)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as logits.pt was computed: the sums of several threads may round differently
    try:
        with torch.no_grad():
            logits = model.eval()(*old_inputs(name, cfg.model.vocab_size))[0]
    finally:
        torch.set_num_threads(threads)
    # the same weights and inputs give the same logits up to float32 rounding: logits.pt was computed on an
    # AVX2 CPU, and an AVX-512 one's kernels round a few sums differently in the last bit (measured there:
    # at most 6e-8 on logits of magnitude 0.4, about 2 units in the last place); a weight loaded wrongly
    # moves them by orders of magnitude more
    torch.testing.assert_close(logits, torch.load(OLD / "logits.pt", weights_only=True)[name], rtol=1e-6, atol=1e-6)


def test_sample_py_continues_text_from_an_old_language_model():
    r = cli("sample.py", f"--checkpoint={OLD / 'char.pt'}", "--prompt=the ", "--max_new_tokens=30", "--seed=1",
            "--device=cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("the ") and len(r.stdout.strip()) >= 20


def test_sample_py_answers_from_an_old_seq2seq_model():
    r = cli("sample.py", f"--checkpoint={OLD / 'copy.pt'}", "--input=1 2 3", "--device=cpu")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # a tiny model trained 4 steps: some answer, not necessarily right


def test_visualize_py_draws_an_old_checkpoint(tmp_path):
    r = cli("visualize.py", f"--checkpoint={OLD / 'copy.pt'}", "--input=1 2 3", f"--out={tmp_path}", "--device=cpu")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "attention.json").read_text())
    assert {"encoder_self", "decoder_self", "cross"} <= set(data["attentions"])
    assert (tmp_path / "attention.html").exists() and list(tmp_path.glob("*.png"))


@pytest.mark.slow
def test_train_py_resumes_an_old_run(tmp_path):
    """--resume=PATH continues the old run after its step 4 up to step 8, evaluating every 2 steps as it did."""
    out = tmp_path / "resumed"
    r = cli("train.py", f"--resume={OLD / 'copy.pt'}", f"--out_dir={out}", "--max_iters=8", "--device=cpu")
    assert r.returncode == 0, r.stderr
    steps = [m["step"] for m in metrics(out) if "train_loss" in m and not m.get("final")]
    assert steps == [6, 8]
    assert load(out / "last.pt")["step"] == 8
