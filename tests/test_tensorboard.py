"""logger: tensorboard: the event files, read back with TensorBoard's own reader (EventAccumulator), say
what metrics.jsonl says (every scalar at its step), carry the settings as hparams with their metric,
an attention image and the examples as text at each evaluation; a resume continues the stream
without duplicated steps; --overwrite removes the events; under torchrun only rank 0 writes."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from helpers import cli, metrics, tiny
from lm import config
from lm.inspect.plots import _series
from lm.inspect.runs import load_runs
from lm.trainer import train


def events(out_dir) -> EventAccumulator:
    acc = EventAccumulator(str(out_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(records) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for r in records:
        for key, value in r.items():
            if key not in ("step", "world_size") and isinstance(value, (int, float)) and not isinstance(value, bool):
                out.setdefault(key, []).append((r["step"], value))
    return out


def lm_cfg(corpus, out, *extra):
    return config.load(None, tiny(corpus, out, "--logger=tensorboard", "--max_iters=8", "--eval_interval=4",
                                  "--dtype=float32", *extra))


def test_events_hold_every_scalar_of_metrics_jsonl_the_hparams_an_image_and_text(small_corpus, tmp_path):
    out = tmp_path / "run"
    train(lm_cfg(small_corpus, out))
    acc = events(out)
    got, want = scalars(acc), expected_scalars(metrics(out))
    assert set(got) == set(want)
    assert {"train_loss", "val_loss", "lr", "grad_norm", "tokens_per_sec", "final_val_loss"} <= set(got)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in want[tag]], rel=1e-6), tag
    # visualize.py --runs draws the same quantities, by the same names, from metrics.jsonl
    (_, records), = load_runs([out])
    for name in ("train_loss", "val_loss"):
        assert list(zip(*_series(records, "step", name))) == pytest.approx(got[name], rel=1e-6), name
    # hparams: the settings, and the metric they are compared by
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["model.embedding_dim"].number_value == 16 and hp["train.logger"].string_value == "tensorboard"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["final_val_loss"]
    assert "_hparams_/session_end_info" in content
    # an attention image and the examples at each evaluation (steps 4 and 8)
    assert acc.Tags()["images"] == ["attention/decoder_self"]
    images = acc.Images("attention/decoder_self")
    assert [i.step for i in images] == [4, 8] and images[0].encoded_image_string.startswith(b"\x89PNG")
    assert images[0].width > 50 and images[0].height > 50
    texts = acc.Tensors("examples/text_summary")
    assert [t.step for t in texts] == [4, 8]
    assert "->" in texts[0].tensor_proto.string_val[0].decode()


def test_seq2seq_events_hold_exact_match_and_its_hparams_metric(tmp_path):
    out = tmp_path / "rev"
    cfg = config.load(None, ["--task=reverse", f"--out_dir={out}", "--logger=tensorboard", "--max_iters=6",
                             "--eval_interval=3", "--batch_size=8", "--num_blocks=1", "--num_heads=2",
                             "--embedding_dim=16", "--held_out_size=8", "--device=cpu", "--log_interval=1",
                             "--show_examples=2"])
    train(cfg)
    acc = events(out)
    got = scalars(acc)
    assert [s for s, _ in got["val_exact"]] == [3, 6] and [s for s, _ in got["final_val_exact"]] == [6]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        acc.PluginTagToContent("hparams")["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["final_val_loss", "final_val_exact"]
    assert set(acc.Tags()["images"]) == {"attention/encoder_self", "attention/decoder_self", "attention/cross"}
    text = acc.Tensors("examples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert text.count("\n") == 1 and text.count("->") == 2 and ("✓" in text or "✗" in text)  # two examples, a line each


class Crash(Exception):
    pass


def test_a_resumed_run_reads_back_like_one_uninterrupted_run(small_corpus, tmp_path):
    """N steps, a crash after the checkpoint (events of steps 9, 10 written but not checkpointed), then a
    resume to 2N: TensorBoard shows each step once, as the uninterrupted 2N-step run does."""
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    train(lm_cfg(small_corpus, whole, "--max_iters=16"))

    def crash_at_11(event):
        if event["event"] == "step" and event["step"] == 11:
            raise Crash

    with pytest.raises(Crash):
        train(lm_cfg(small_corpus, broken, "--max_iters=16"), on_event=crash_at_11)
    done = cli("train.py", *tiny(small_corpus, broken, "--logger=tensorboard", "--max_iters=16",
                                 "--eval_interval=4", "--dtype=float32", "--resume"))
    assert done.returncode == 0, done.stderr
    got, want = scalars(events(broken)), scalars(events(whole))
    assert set(got) == set(want)
    for tag in want:
        assert [s for s, _ in got[tag]] == [s for s, _ in want[tag]], tag  # no step twice, none missing
    assert [v for _, v in got["train_loss"]] == pytest.approx([v for _, v in want["train_loss"]], rel=1e-5)
    assert [v for _, v in got["val_loss"]] == pytest.approx([v for _, v in want["val_loss"]], rel=1e-5)


def test_overwrite_removes_the_old_events(small_corpus, tmp_path):
    out = tmp_path / "run"
    train(lm_cfg(small_corpus, out))
    assert list((out / "tensorboard").iterdir())
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--overwrite"))
    assert done.returncode == 0, done.stderr
    assert not (out / "tensorboard").exists()


def test_logger_none_writes_no_events(small_corpus, tmp_path):
    out = tmp_path / "run"
    train(config.load(None, tiny(small_corpus, out, "--max_iters=2")))
    assert not (out / "tensorboard").exists()


def test_an_unknown_logger_is_refused_with_the_names_allowed(small_corpus, tmp_path):
    done = cli("train.py", *tiny(small_corpus, tmp_path / "run", "--logger=wandb"))
    assert done.returncode == 2 and "logger" in done.stderr and "tensorboard" in done.stderr, done.stderr


@pytest.mark.slow
def test_under_torchrun_only_rank_0_writes_events(small_corpus, tmp_path):
    from test_distributed import torchrun

    out = tmp_path / "two"
    done = torchrun(2, *tiny(small_corpus, out, "--max_iters=4", "--eval_interval=2", "--grad_accum=2",
                                         "--logger=tensorboard"))
    assert done.returncode == 0, done.stderr
    files = list((out / "tensorboard").iterdir())
    assert len(files) == 1, files  # one writer: rank 0's
    got = scalars(events(out))
    assert [s for s, _ in got["train_loss"]] == [1, 2, 3, 4]
    assert json.loads((out / "run.json").read_text())["run_id"]
