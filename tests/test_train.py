import json
import math

import pytest
import torch

from lm import checkpoint, config
from lm.nn import token_loss
from lm.trainer import TrainingError, lr_at, total_steps, train


def tiny_cfg(corpus, out_dir, *extra):
    return config.load(None, [f"--data_path={corpus}", f"--out_dir={out_dir}", "--block_size=16",
                              "--batch_size=4", "--num_blocks=2", "--num_heads=2", "--embedding_dim=16",
                              "--eval_iters=2", "--log_interval=1", "--device=cpu", "--warmup_iters=2", *extra])


def read_metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    cfg = config.load(None, ["--lr=1.0", "--min_lr=0.1", "--warmup_iters=10"])
    lrs = [lr_at(s, cfg, 110) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert lrs[110] == pytest.approx(0.1) and lrs[60] == pytest.approx(0.55)


def test_lr_decay_iters_ends_the_cosine_and_holds_the_floor():
    cfg = config.load(None, ["--lr=1.0", "--min_lr=0.1", "--warmup_iters=10", "--lr_decay_iters=50"])
    lrs = [lr_at(s, cfg, 200) for s in range(200)]  # a 200-step run whose decay ends at step 50
    assert lrs[9] == pytest.approx(1.0)
    assert lrs[30] == pytest.approx(0.55)  # half way from the warm-up's end (10) to lr_decay_iters (50)
    assert lrs[50] == pytest.approx(0.1) and all(lr == pytest.approx(0.1) for lr in lrs[50:])
    assert all(a > b for a, b in zip(lrs[10:50], lrs[11:51]))
    # the total steps no longer matter: the same schedule in a 60-step run
    assert [lr_at(s, cfg, 60) for s in range(60)] == lrs[:60]


def test_total_steps_epochs_and_max_iters():
    cfg = config.load(None, ["--batch_size=10", "--grad_accum=2", "--epochs=2"])
    assert total_steps(cfg, 1000 / 20) == 100  # 2 epochs x 1000 windows / 20 windows per step
    cfg = config.load(None, ["--batch_size=10", "--epochs=2", "--max_iters=30"])
    assert total_steps(cfg, 1000 / 10) == 30  # whichever comes first
    cfg = config.load(None, ["--batch_size=10", "--max_iters=null"])
    assert total_steps(cfg, 1000 / 10) == 100  # neither: one epoch


def test_run_writes_metrics_and_checkpoints(small_corpus, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_cfg(small_corpus, out, "--max_iters=6", "--eval_interval=3"))
    rows = read_metrics(out)
    steps = [r for r in rows if "train_loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    for r in steps:
        assert {"step", "train_loss", "lr", "tokens_per_sec", "elapsed_s"} <= r.keys()
    evals = [r for r in steps if "val_loss" in r]
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[0]["val_bpc"] == pytest.approx(evals[0]["val_loss"] / math.log(2))
    assert all(b["elapsed_s"] > a["elapsed_s"] for a, b in zip(steps, steps[1:]))
    assert rows[-1]["final_val_loss"] == pytest.approx(summary["final_val_loss"])
    last, best = checkpoint.load(out / "last.pt"), checkpoint.load(out / "best.pt")
    assert last["step"] == 6 and best["best_val_loss"] == min(r["val_loss"] for r in evals)


@pytest.mark.parametrize("grad_accum,task", [(1, "lm"), (2, "lm"), (1, "copy")])
@pytest.mark.slow
def test_resume_is_exact(small_corpus, tmp_path, grad_accum, task):
    """2N steps straight == N steps, then resume for N more: same per-step losses and weights (dropout on)."""
    common = ["--dropout=0.1", "--eval_interval=4", f"--grad_accum={grad_accum}", "--lr_decay_iters=12",
              f"--task={task}", "--max_len=5", "--eval_long_len=6", "--held_out_size=20"]
    straight = tmp_path / "straight"
    train(tiny_cfg(small_corpus, straight, "--max_iters=12", *common))
    split = tmp_path / "split"
    train(tiny_cfg(small_corpus, split, "--max_iters=6", *common))
    train(tiny_cfg(small_corpus, split, "--max_iters=12", *common), resume=checkpoint.resume_point(True, split))
    losses = lambda d: [(r["step"], r["train_loss"]) for r in read_metrics(d) if "train_loss" in r]
    assert losses(straight) == losses(split)
    a, b = checkpoint.load(straight / "last.pt"), checkpoint.load(split / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_resume_refuses_a_different_model(small_corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(small_corpus, out, "--max_iters=2", "--eval_interval=2"))
    with pytest.raises(config.ConfigError) as e:
        train(tiny_cfg(small_corpus, out, "--max_iters=4", "--embedding_dim=32"),
              resume=checkpoint.resume_point(True, out))
    assert "embedding_dim" in str(e.value) and "16" in str(e.value) and "32" in str(e.value)


def test_train_takes_the_checkpoint_already_read(small_corpus, tmp_path):
    """resume is a ResumePoint (lm.checkpoint.resume_point reads the one --resume asks for), not --resume's value."""
    with pytest.raises(TypeError, match="lm.checkpoint.resume_point"):
        train(tiny_cfg(small_corpus, tmp_path / "run"), resume=True)
    assert not (tmp_path / "run").exists()


def test_overfits_one_batch(small_corpus, tmp_path):
    """The model and optimizer can memorise one fixed batch: its loss falls close to zero."""
    from lm.data.corpus import prepare_corpus
    from lm.data.windows import window_batch
    from lm.nn import GPT
    from lm.trainer import make_optimizer

    cfg = tiny_cfg(small_corpus, tmp_path, "--lr=3e-3", "--embedding_dim=32")
    corpus = prepare_corpus(small_corpus, tmp_path / "cache", 0.1, 16)
    cfg.model.vocab_size = corpus.tokenizer.vocab_size
    x, y = window_batch(corpus.train, 4, 16, seed=0, index=0)
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    losses = []
    for _ in range(150):
        logits, _ = model(x)
        loss = token_loss(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 3.0 and losses[-1] < 0.05


def test_non_finite_loss_stops_without_a_checkpoint(small_corpus, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="loss became"):
        train(tiny_cfg(small_corpus, out, "--max_iters=50", "--eval_interval=50", "--lr=1e30",
                       "--warmup_iters=0", "--grad_clip=0", "--min_lr=1e30"))
    assert not (out / "last.pt").exists()


def test_resume_drops_metrics_written_after_the_checkpoint(small_corpus, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(small_corpus, out, "--max_iters=4", "--eval_interval=4", "--lr_decay_iters=6"))
    with open(out / "metrics.jsonl", "a") as f:  # what a crash after the checkpoint could leave
        f.write(json.dumps({"step": 5, "train_loss": 9.9}) + "\n" + '{"step": 6, "train_lo')
    train(tiny_cfg(small_corpus, out, "--max_iters=6", "--eval_interval=4", "--lr_decay_iters=6"),
          resume=checkpoint.resume_point(True, out))
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "train_loss" in r] == [1, 2, 3, 4, 5, 6]
    assert all(r.get("train_loss") != 9.9 for r in rows)
