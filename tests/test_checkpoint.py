import pytest
import torch

from conftest import RunsCode
from lm import checkpoint
from lm.checkpoint import CheckpointError
from lm.config import Config, ConfigError, from_dict
from lm.nn import GPT
from lm.data.tokenizer import CharTokenizer


def make_payload():
    cfg = Config()
    cfg.model.vocab_size, cfg.model.block_size, cfg.model.num_blocks = 5, 8, 1
    cfg.model.embedding_dim, cfg.model.num_heads = 8, 2
    torch.manual_seed(0)
    model = GPT(cfg.model)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 4, dtype=torch.long))[0].logsumexp(-1).mean().backward()
    opt.step()
    return model, {"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3,
                   "rng": checkpoint.rng_state(), "config": cfg.to_dict(),
                   "tokenizer": CharTokenizer("abcde").state(), "best_val_loss": 1.5}


def test_round_trip_rebuilds_the_same_model(tmp_path):
    model, payload = make_payload()
    path = tmp_path / "ck.pt"
    checkpoint.save(path, payload)
    loaded, tok, cfg = checkpoint.load_model(path)
    idx = torch.tensor([[0, 1, 2, 3]])
    assert torch.equal(model.eval()(idx)[0], loaded(idx)[0])
    assert tok.chars == "abcde" and cfg.model.vocab_size == 5
    raw = checkpoint.load(path)
    assert raw["step"] == 3 and raw["format_version"] == checkpoint.FORMAT_VERSION
    assert raw["optimizer"]["state"][0]["exp_avg"].shape == model.embed.tok.weight.shape


def test_failed_save_leaves_previous_checkpoint_whole(tmp_path, monkeypatch):
    _, payload = make_payload()
    path = tmp_path / "ck.pt"
    checkpoint.save(path, payload)
    before = path.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", crash)
    with pytest.raises(OSError):
        checkpoint.save(path, {**payload, "step": 4})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind


def test_truncated_checkpoint_gets_a_clear_error(tmp_path):
    _, payload = make_payload()
    path = tmp_path / "ck.pt"
    checkpoint.save(path, payload)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(path)


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _, payload = make_payload()
    payload["extra"] = RunsCode(marker)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="refused"):
        checkpoint.load(path)
    assert not marker.exists()


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.load(tmp_path / "none.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not an lm checkpoint"):
        checkpoint.load(tmp_path / "other.pt")


def test_resume_point_reads_what_resume_asks_for(tmp_path):
    """resume_point: None for no resume, out_dir's checkpoint for True, a path's own for a path."""
    run = tmp_path / "run"
    run.mkdir()
    checkpoint.save(run / "last.pt", {"model": {}, "config": Config().to_dict(), "step": 3})
    assert checkpoint.resume_point(False, run) is None and checkpoint.resume_point(None, run) is None
    point = checkpoint.resume_point(True, run)
    assert (point.path, point.source, point.ckpt["step"]) == (run / "last.pt", run, 3)
    assert checkpoint.resume_point(str(run / "last.pt"), None).path == run / "last.pt"
    assert checkpoint.resume_point(run, tmp_path / "elsewhere").source == run
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        checkpoint.resume_point(True, tmp_path / "none")


def test_what_may_change_on_resume():
    """check_resume_config: the model's shape and the optimizer may not change, the other settings are
    reported; a setting newer than the checkpoint counts as what the code then did. check_resume_vocab:
    the vocabulary may not change."""
    saved = Config().to_dict()
    cfg = from_dict(saved)
    cfg.train.lr, cfg.model.dropout = 1e-4, 0.3
    changes = checkpoint.check_resume_config(saved, cfg)
    assert ("train.lr", saved["train"]["lr"], 1e-4) in changes and ("model.dropout", 0.0, 0.3) in changes
    cfg.model.embedding_dim = saved["model"]["embedding_dim"] * 2
    with pytest.raises(ConfigError, match="cannot resume: the model differs .*embedding_dim"):
        checkpoint.check_resume_config(saved, cfg)
    before_optimizers = {**saved, "train": {k: v for k, v in saved["train"].items() if k != "optimizer"}}
    cfg = from_dict(saved)
    cfg.train.optimizer = "muon"
    with pytest.raises(ConfigError, match="train.optimizer: checkpoint has 'adamw', config has 'muon'"):
        checkpoint.check_resume_config(before_optimizers, cfg)
    ckpt = {"tokenizer": CharTokenizer("abcde").state()}
    checkpoint.check_resume_vocab(ckpt, CharTokenizer("abcde").state())
    described = r"vocabulary differs from the checkpoint.s \(checkpoint 5 characters, this run 6 characters\)"
    with pytest.raises(ConfigError, match=described):
        checkpoint.check_resume_vocab(ckpt, CharTokenizer("abcdef").state())
