"""Seeing inside: the one attention-weights convention (AttentionMaps) of every model kind and variant,
attention records of real checkpoints, how heads specialise (mean attention distance and entropy on hand-made
maps), visualize.py end to end (PNGs, attention.json, attention.html, --runs, attention across checkpoints with
its strips and slider), and loss.png written by every run."""

import hashlib
import json
import math
import shutil

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.colors import to_rgb
from PIL import Image

from helpers import cli, metrics, tiny
from lm import trainer
from lm.inspect import plots
from lm.inspect import attention_maps
from lm.inspect.attention_maps import AttentionRecord, Frame, head_stats, record
from lm import checkpoint as ckpt_io
from lm.checkpoint import CheckpointError, load_model
from lm.config import ModelConfig
from lm.config import load as load_config
from lm.nn import GPT, AttentionMaps, Encoder, EncoderDecoder
from lm.inspect.runs import RunError, checkpoint_files, evaluation_of, load_runs, step_label
from lm.data.tasks import BOS, EOS

VARIANTS = [("learned", "standard", "pre"), ("rope", "differential", "post"), ("sinusoidal", "differential", "pre"),
            ("none", "standard", "post")]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def build(cls, pos, attn, norm, heads=4):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=13, block_size=16, num_blocks=3, num_heads=heads, embedding_dim=32,
                      pos_encoding=pos, attention=attn, norm_placement=norm)
    return cls(cfg).eval()


# ----------------------------------------------------------------------------- one convention for every model

@pytest.mark.parametrize("pos,attn,norm", VARIANTS)
def test_every_model_returns_attention_maps_of_the_same_form(pos, attn, norm):
    B, S, T = 2, 7, 5
    heads = 4 if attn == "standard" else 2
    src = torch.randint(3, 13, (B, S))
    src_mask = torch.ones(B, S, dtype=torch.bool)
    src_mask[1, 4:] = False  # the second source is 4 tokens long: padding after
    tgt = torch.randint(3, 13, (B, T))

    gpt = build(GPT, pos, attn, norm)
    logits, maps = gpt(tgt, return_weights=True)
    assert isinstance(maps, AttentionMaps) and list(maps.kinds()) == ["decoder_self"]
    assert gpt(tgt)[1] is None
    torch.testing.assert_close(gpt(tgt)[0], logits, atol=1e-5, rtol=1e-5)
    for layer, w in enumerate(maps.decoder_self):
        assert w.shape == (B, heads, T, T)
        assert (w.triu(diagonal=1) == 0).all()  # causal: no weight on the future
        want = 1.0 if attn == "standard" else float(1 - gpt.blocks[layer].self_attn.lambda_full().detach())
        torch.testing.assert_close(w.sum(-1), torch.full((B, heads, T), want), atol=1e-5, rtol=1e-5)

    encoder = build(Encoder, pos, attn, norm)
    _, maps = encoder(src, src_mask, return_weights=True)
    assert list(maps.kinds()) == ["encoder_self"] and len(maps.encoder_self) == 3
    assert all(w.shape == (B, heads, S, S) for w in maps.encoder_self)
    assert all((w[1, :, :, 4:] == 0).all() for w in maps.encoder_self)  # padding keys get no weight

    model = build(EncoderDecoder, pos, attn, norm)
    logits, maps = model(src, tgt, src_mask, return_weights=True)
    assert list(maps.kinds()) == ["encoder_self", "decoder_self", "cross"]
    assert model(src, tgt, src_mask)[1] is None
    torch.testing.assert_close(model(src, tgt, src_mask)[0], logits, atol=1e-5, rtol=1e-5)
    shapes = {"encoder_self": (B, heads, S, S), "decoder_self": (B, heads, T, T), "cross": (B, heads, T, S)}
    for kind, layers in maps.kinds().items():
        assert len(layers) == 3 and all(w.shape == shapes[kind] for w in layers), kind
    assert all((w[1, :, :, 4:] == 0).all() for w in maps.cross)  # cross-attention never reads padding
    assert all((w.triu(diagonal=1) == 0).all() for w in maps.decoder_self)
    for layer, w in enumerate(maps.cross):
        want = 1.0 if attn == "standard" else float(1 - model.blocks[layer].cross_attn.lambda_full().detach())
        torch.testing.assert_close(w.sum(-1), torch.full((B, heads, T), want), atol=1e-5, rtol=1e-5)
    # the parts give the same maps as the whole: encode + decode, and the Encoder stack alone
    memory, enc_maps = model.encoder(src, src_mask, return_weights=True)
    _, dec_maps = model.decode(tgt, memory, src_mask, return_weights=True)
    for a, b in zip(enc_maps.encoder_self + dec_maps.decoder_self + dec_maps.cross,
                    maps.encoder_self + maps.decoder_self + maps.cross):
        torch.testing.assert_close(a, b)


def test_attention_maps_reproduce_the_attention_output():
    """The weights returned are the ones used: weights @ V through the output projection gives the layer's output."""
    model = build(GPT, "learned", "standard", "pre")
    x = torch.randn(2, 6, 32)
    attn = model.blocks[0].self_attn
    y, w = attn(x, return_weights=True)
    v = attn.kv_proj(x).split(32, dim=2)[1].view(2, 6, 4, 8).transpose(1, 2)  # (B, nh, T, hs)
    by_hand = attn.out_proj((w @ v).transpose(1, 2).reshape(2, 6, 32))
    torch.testing.assert_close(y, by_hand)


# ----------------------------------------------------------------------------- checkpoints to look at

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory, request):
    """Tiny real checkpoints made by train.py: a language model, a copy model, a grid model with
    differential attention and 2D positions."""
    root = tmp_path_factory.mktemp("viz")
    corpus = root / "corpus.txt"
    corpus.write_text("ROMEO: hello there, Juliet!\nJULIET: hello, Romeo.\n" * 40, encoding="utf-8")
    seq2seq = ["--block_size=24", "--num_blocks=2", "--num_heads=4", "--embedding_dim=32", "--max_iters=6",
               "--eval_interval=3", "--batch_size=8", "--held_out_size=20", "--device=cpu", "--warmup_iters=2",
               "--dtype=float32"]  # not auto: the same weights on a CPU with native bfloat16
    runs = {
        "lm": tiny(corpus, root / "lm", "--max_iters=6", "--eval_interval=3", "--num_blocks=2", "--dtype=float32"),
        "copy": ["--task=copy", "--max_len=6", "--eval_long_len=8", f"--out_dir={root / 'copy'}", *seq2seq],
        "grid": ["--task=grid", "--min_len=2", "--max_len=3", "--eval_long_len=3", "--num_symbols=5",
                 "--pos_encoding=learned_2d", "--attention=differential", f"--out_dir={root / 'grid'}", *seq2seq],
    }
    for name, args in runs.items():
        done = cli("train.py", *args)
        assert done.returncode == 0, done.stderr
    return root


def test_record_of_a_language_model(checkpoints):
    model, vocab, cfg = load_model(checkpoints / "lm" / "best.pt")
    rec = record(model, vocab, cfg, "ROMEO: hi", "cpu")
    assert rec.kind == "lm" and rec.tokens == list("ROMEO: hi")
    assert list(rec.maps) == ["decoder_self"] and rec.maps["decoder_self"].shape == (2, 2, 9, 9)
    with torch.no_grad():
        _, maps = model(torch.tensor(vocab.encode("ROMEO: hi").tolist())[None], return_weights=True)
    np.testing.assert_allclose(rec.maps["decoder_self"][1], maps.decoder_self[1][0].numpy())
    data = rec.to_json()
    assert data["config"]["task"] == "lm" and data["config"]["num_heads"] == 2
    np.testing.assert_allclose(np.array(data["attentions"]["decoder_self"]), rec.maps["decoder_self"], atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        record(model, vocab, cfg, "R" * 17, "cpu")
    with pytest.raises(ValueError, match="cannot be encoded"):
        record(model, vocab, cfg, "ROMEO 🙂", "cpu")
    with pytest.raises(ValueError, match="empty"):
        record(model, vocab, cfg, "", "cpu")


@pytest.mark.parametrize("decoded,target,output,ended", [
    ([8, 10, 5, EOS], ["<bos>", "5", "7", "2"], "5 7 2", True),  # output 5 7 2, then EOS: 4 queries
    ([EOS], ["<bos>"], "", True),  # an empty output: BOS alone predicted EOS
    ([8] * 24, ["<bos>"] + ["5"] * 23, " ".join(["5"] * 24), False),  # no EOS within block_size tokens
])
def test_record_of_a_seq2seq_model_decodes_then_looks(checkpoints, monkeypatch, decoded, target, output, ended):
    """Rows are the decoder inputs that produced the decoded output: BOS, then every output token but the
    last one (EOS, or the token at the length limit, which is nobody's input)."""
    model, task, cfg = load_model(checkpoints / "copy" / "best.pt")
    monkeypatch.setattr(attention_maps, "greedy_decode", lambda *a, **k: torch.tensor([decoded]))
    rec = record(model, task, cfg, "5 7 9 2", "cpu")
    assert rec.tokens == {"source": ["5", "7", "9", "2"], "target": target}
    assert rec.output == output and rec.ended is ended
    L, H, S, T = 2, 4, 4, len(target)
    assert {k: m.shape for k, m in rec.maps.items()} == {"encoder_self": (L, H, S, S), "decoder_self": (L, H, T, T),
                                                         "cross": (L, H, T, S)}
    assert rec.axes("cross") == (target, rec.tokens["source"])
    # the maps are those of the teacher-forced pass over exactly these decoder inputs
    tgt = torch.tensor([[BOS] + task.to_ids([int(t) for t in target[1:]])])  # (1, T)
    src = torch.tensor([task.to_ids([5, 7, 9, 2])])
    with torch.no_grad():
        _, maps = model(src, tgt, torch.ones_like(src, dtype=torch.bool), return_weights=True)
    np.testing.assert_allclose(rec.maps["cross"][1], maps.cross[1][0].numpy(), atol=1e-6)


def test_a_model_with_broken_weights_is_refused(checkpoints):
    model, vocab, cfg = load_model(checkpoints / "lm" / "best.pt")
    with torch.no_grad():
        model.blocks[0].self_attn.q_proj.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="not finite"):
        record(model, vocab, cfg, "ROMEO", "cpu")


def test_grid_tokens_show_the_row_separator_and_differential_maps_count_as_signed(checkpoints):
    model, task, cfg = load_model(checkpoints / "grid" / "best.pt")
    rec = record(model, task, cfg, "01/23", "cpu")
    assert rec.tokens["source"] == ["0", "1", "/", "2", "3"]
    assert rec.maps["cross"].shape[1] == 2  # differential: num_heads / 2 heads
    assert rec.config["attention"] == "differential" and rec.config["grid_op"] == "rotate"
    assert rec.signed  # by its attention, even where no weight happens to be negative
    assert plots._colours(rec)[0] == "RdBu_r"


# ----------------------------------------------------------------------------- how heads specialise

def one_head(rows):
    """A (1, 1, T_q, T_k) stack of one hand-made map."""
    return np.array(rows, dtype=np.float32)[None, None]


def test_a_head_that_looks_at_its_own_position_has_distance_and_entropy_zero():
    distance, entropy = head_stats(one_head(np.eye(5)))
    assert distance.shape == entropy.shape == (1, 1)
    assert distance[0, 0] == 0 and entropy[0, 0] == 0
    assert math.copysign(1.0, entropy[0, 0]) == 1.0  # 0.0, not -0.0 (a caption would read "-0.00")


def test_a_uniform_head_has_entropy_ln_n_and_the_mean_offset_as_distance():
    distance, entropy = head_stats(one_head(np.full((3, 4), 0.25)))  # every row uniform over 4 keys
    mean_offset = np.mean([np.mean([abs(q - k) for k in range(4)]) for q in range(3)])  # (1.5 + 1 + 1) / 3
    assert distance[0, 0] == pytest.approx(mean_offset) and mean_offset == pytest.approx(7 / 6)
    assert entropy[0, 0] == pytest.approx(math.log(4))
    # causal and uniform: row q spreads over its q + 1 keys (0..q), at mean offset q / 2
    causal = np.tril(np.ones((6, 6))) / np.arange(1, 7)[:, None]
    distance, entropy = head_stats(one_head(causal))
    assert distance[0, 0] == pytest.approx(np.mean(np.arange(6) / 2))
    assert entropy[0, 0] == pytest.approx(np.mean(np.log(np.arange(1, 7))))


def test_a_head_that_looks_one_back_has_distance_one():
    back = np.eye(6, k=-1)  # row q reads q - 1 ...
    back[0, 1] = 1.0  # ... and row 0, which has nothing before it, the one after
    distance, entropy = head_stats(one_head(back))
    assert distance[0, 0] == pytest.approx(1.0) and entropy[0, 0] == 0
    # cross-attention counts the same index offset: target position q reading source position q + 1
    distance, _ = head_stats(one_head(np.eye(3, 5, k=1)))
    assert distance[0, 0] == pytest.approx(1.0)


def test_signed_maps_are_measured_by_their_magnitudes_renormalised_per_row():
    signed = [[0.9, 0.0], [-0.3, 0.1]]  # differential attention: rows sum to 1 - lambda, here 0.9 and -0.2
    distance, entropy = head_stats(one_head(signed))
    # |w| per row: [1, 0] (distance 0, entropy 0) and [0.75, 0.25] (distance 0.75, entropy of 3:1)
    assert distance[0, 0] == pytest.approx(0.75 / 2)
    assert entropy[0, 0] == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / 2)
    assert head_stats(one_head([[0.0, 0.0], [0.0, 1.0]]))[1][0, 0] == 0  # a row with no weight counts 0


def test_stats_are_per_layer_and_head_and_in_the_json():
    heads = np.stack([np.eye(4), np.full((4, 4), 0.25), np.eye(4, k=-1) + np.eye(4, k=3)])  # (3, 4, 4)
    maps = np.stack([heads, heads[::-1]]).astype(np.float32)  # (2 layers, 3 heads, 4, 4)
    distance, entropy = head_stats(maps)
    assert distance.shape == entropy.shape == (2, 3)
    np.testing.assert_allclose(distance[0], [0.0, 1.25, 1.5])  # the last: rows 1..3 one back, row 0 three on
    np.testing.assert_allclose(distance[1], distance[0, ::-1])
    np.testing.assert_allclose(entropy[0], [0.0, math.log(4), 0.0], atol=1e-12)
    rec = AttentionRecord("lm", list("abcd"), {"decoder_self": maps}, {"task": "lm"})
    stats = rec.to_json()["stats"]
    assert list(stats) == ["decoder_self"] and set(stats["decoder_self"]) == {"distance", "entropy"}
    assert stats["decoder_self"]["distance"] == [[0.0, 1.25, 1.5], [1.5, 1.25, 0.0]]
    assert stats["decoder_self"]["entropy"][0][1] == pytest.approx(math.log(4), abs=1e-5)  # rounded to 5 decimals


# ----------------------------------------------------------------------------- visualize.py

def pngs(directory):
    return sorted(p.name for p in directory.glob("*.png"))


def rgb(png):
    """A PNG's pixels as an (H, W, 3) int array."""
    with Image.open(png) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB")).astype(int)


def _run(mask):
    """(start, stop) of the first run of True in a 1-D mask."""
    assert mask.any(), "nothing drawn"
    start = int(np.argmax(mask))
    rest = mask[start:]
    return start, start + (int(np.argmin(rest)) if not rest.all() else len(rest))


def heatmap_cells(png, rows, cols):
    """The RGB at the middle of every cell of the heatmap of a one-head PNG, (rows, cols, 3), found from the
    pixels alone: the leftmost band of columns mostly drawn on (the colour bar is the next band), and in it
    the rows drawn on from edge to edge; the band is cut into rows x cols equal cells."""
    image = rgb(png)
    drawn = (image != 255).any(-1)  # on the white background
    x0, x1 = _run(drawn.sum(0) > 0.5 * drawn.sum(0).max())
    y0, y1 = _run(drawn[:, x0:x1].mean(1) > 0.95)
    ys = (y0 + (np.arange(rows) + 0.5) * (y1 - y0) / rows).astype(int)
    xs = (x0 + (np.arange(cols) + 0.5) * (x1 - x0) / cols).astype(int)
    return image[ys[:, None], xs[None, :]]


def scale_colour(cmap, fraction):
    """RGB (0..255) of matplotlib's colour map at fraction (0..1) of its range."""
    return np.array(matplotlib.colormaps[cmap](fraction)[:3]) * 255


def test_visualize_a_language_model(checkpoints, tmp_path):
    out = tmp_path / "viz"
    done = cli("visualize.py", "--checkpoint", checkpoints / "lm" / "best.pt", "--text", "ROMEO: hello",
               "--out", out, "--layer", "0", "--head", "1")
    assert done.returncode == 0, done.stderr
    assert pngs(out) == ["decoder_self_layer0.png", "decoder_self_layer0_head1.png", "decoder_self_overview.png"]
    for png in out.glob("*.png"):
        with Image.open(png) as image:
            assert image.format == "PNG" and min(image.size) > 100
    data = json.loads((out / "attention.json").read_text())
    assert data["tokens"] == list("ROMEO: hello")
    assert list(data["attentions"]) == ["decoder_self"]
    assert np.array(data["attentions"]["decoder_self"]).shape == (2, 2, 12, 12)
    assert data["config"]["pos_encoding"] == "learned"
    # the one-head PNG draws that head's weights: nothing above the diagonal (causal), every row has its
    # weights, each cell in the colour of its weight on the record's 0..max scale
    weights = np.array(data["attentions"]["decoder_self"])
    cells = heatmap_cells(out / "decoder_self_layer0_head1.png", 12, 12)
    future = np.triu(np.ones((12, 12), bool), k=1)
    zero = scale_colour("Blues", 0.0)
    assert (np.abs(cells[future] - zero) <= 2).all()  # the weight-0 colour, not the white background
    assert (np.abs(cells - zero).max(-1) > 8).any(-1).all()  # each row: a weight >= 1/12, drawn darker
    expected = np.stack([scale_colour("Blues", w / weights.max()) for w in weights[0, 1].ravel()]).reshape(12, 12, 3)
    assert np.abs(cells - expected).max() <= 3
    html = (out / "attention.html").read_text()
    assert "http://" not in html and "https://" not in html
    assert str(out / "attention.html") in done.stdout


@pytest.mark.slow
def test_visualize_a_seq2seq_model_defaults_to_the_last_layer(checkpoints, tmp_path):
    out = tmp_path / "viz"
    done = cli("visualize.py", "--checkpoint", checkpoints / "copy" / "best.pt", "--input", "5 7 9 2", "--out", out)
    assert done.returncode == 0, done.stderr
    assert pngs(out) == sorted(f"{kind}_{name}.png" for kind in ("encoder_self", "decoder_self", "cross")
                               for name in ("layer1", "layer1_head0", "overview"))
    data = json.loads((out / "attention.json").read_text())
    assert data["tokens"]["source"] == ["5", "7", "9", "2"] and data["tokens"]["target"][0] == "<bos>"
    assert set(data["attentions"]) == {"encoder_self", "decoder_self", "cross"}
    assert "-> output" in done.stdout


@pytest.mark.parametrize("args,message", [
    (["--layer", "2"], "--layer 2 is not allowed; this model has 2 layers: 0..1"),
    (["--layer", "-1"], "--layer -1 is not allowed; this model has 2 layers: 0..1"),
    (["--device", "tpu9"], "device: 'tpu9' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["--head", "4"], "--head 4 is not allowed; this model has 4 heads: 0..3"),
    (["--text", "abc"], "--text is for language-model checkpoints"),
    ([], "give the source with --input"),
])
@pytest.mark.slow
def test_visualize_refuses_bad_settings_with_exit_2(checkpoints, tmp_path, args, message):
    extra = [] if "--text" in args or args == [] else ["--input", "5 7"]
    done = cli("visualize.py", "--checkpoint", checkpoints / "copy" / "best.pt", *extra, *args, "--out", tmp_path)
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_visualize_differential_heads_are_counted_as_such(checkpoints, tmp_path):
    done = cli("visualize.py", "--checkpoint", checkpoints / "grid" / "best.pt", "--input", "01/23", "--head", "2",
               "--out", tmp_path)
    assert done.returncode == 2 and "2 heads (differential: num_heads / 2): 0..1" in done.stderr, done.stderr


def test_heatmaps_use_a_diverging_scale_centred_on_zero_for_signed_weights(tmp_path):
    plain = AttentionRecord("lm", ["a", "b"], {"decoder_self": np.array([[[[1, 0], [0.3, 0.7]]]], np.float32)},
                            {"task": "lm", "attention": "standard", "pos_encoding": "learned"})
    signed = AttentionRecord("lm", ["a", "b"], {"decoder_self": np.array([[[[0.9, 0], [-0.4, 0.1]]]], np.float32)},
                             {"task": "lm", "attention": "standard", "pos_encoding": "learned"})
    cmap, norm = plots._colours(plain)
    assert cmap == "Blues" and (norm.vmin, norm.vmax) == (0.0, 1.0)
    cmap, norm = plots._colours(signed)
    assert cmap == "RdBu_r" and norm.vmin == -norm.vmax == pytest.approx(-0.9)
    plots.plot_head(signed, "decoder_self", 0, 0, tmp_path / "h.png")
    cells = heatmap_cells(tmp_path / "h.png", 2, 2)  # what the PNG shows, from its pixels
    for (q, k), w in np.ndenumerate(signed.maps["decoder_self"][0, 0]):
        assert np.abs(cells[q, k] - scale_colour("RdBu_r", (w + 0.9) / 1.8)).max() <= 3, (q, k, cells[q, k])
    red, _, blue = cells[0, 0]
    assert red > blue + 60  # 0.9: red
    red, _, blue = cells[1, 0]
    assert blue > red + 60  # -0.4: blue
    assert cells[0, 1].min() >= 240  # 0: the middle of the scale, near white


def test_heatmaps_put_queries_on_rows_and_keys_on_columns(checkpoints, tmp_path):
    model, task, cfg = load_model(checkpoints / "copy" / "best.pt")
    rec = record(model, task, cfg, "5 7 9 2 1 0", "cpu")
    queries, keys = rec.axes("cross")
    fig = plots.plot_head(rec, "cross", 1, 3, tmp_path / "head.png")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), rec.maps["cross"][1, 3])  # (T_q, T_k), not transposed
    assert [t.get_text() for t in ax.get_yticklabels()] == queries
    assert [t.get_text() for t in ax.get_xticklabels()] == keys
    fig = plots.plot_overview(rec, "decoder_self", tmp_path / "overview.png")
    drawn = [ax for ax in fig.axes if ax.images and ax.get_visible()]
    assert len(drawn) == 2 * 4  # layers x heads
    np.testing.assert_array_equal(drawn[5].images[0].get_array(), rec.maps["decoder_self"][1, 1])
    assert plots.token_label(" \n$x_") == "␣↵\\$x_"


# ----------------------------------------------------------------------------- loss.png and --runs

def test_every_run_redraws_loss_png_at_each_evaluation_and_at_the_end(small_corpus, tmp_path):
    cfg = load_config(None, [f"--data_path={small_corpus}", f"--out_dir={tmp_path / 'run'}", "--block_size=16",
                             "--batch_size=4", "--num_blocks=1", "--num_heads=2", "--embedding_dim=16",
                             "--eval_iters=1", "--max_iters=7", "--eval_interval=2", "--log_interval=1",
                             "--device=cpu"])
    png = tmp_path / "run" / "loss.png"
    seen = []

    def on_event(event):
        if event["event"] == "step" and png.exists():
            seen.append(hashlib.sha256(png.read_bytes()).hexdigest())

    trainer.train(cfg, on_event=on_event)
    # evaluations at steps 2, 4, 6: the picture changes after each, and again at the end
    assert len(set(seen)) == 3
    assert hashlib.sha256(png.read_bytes()).hexdigest() not in seen
    with Image.open(png) as image:
        assert image.format == "PNG"


def test_the_final_evaluation_of_a_last_step_off_the_interval_is_on_the_curve(tmp_path):
    records = [{"step": 2, "train_loss": 2.0, "val_loss": 2.1, "elapsed_s": 0.2},
               {"step": 3, "final": True, "train_loss": 1.9, "val_loss": 1.95, "final_val_loss": 1.9, "elapsed_s": 0.3}]
    fig = plots.plot_run(records, tmp_path / "loss.png")
    val = [line for line in fig.axes[0].get_lines() if line.get_label() == "validation"][0]
    assert list(val.get_xdata()) == [2, 3] and list(val.get_ydata()) == [2.1, 1.95]


def test_a_loss_png_that_cannot_be_drawn_never_stops_the_run(small_corpus, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no canvas today")

    monkeypatch.setattr(plots, "plot_run", broken)
    cfg = load_config(None, [f"--data_path={small_corpus}", f"--out_dir={tmp_path / 'run'}", "--block_size=16",
                             "--batch_size=4", "--num_blocks=1", "--num_heads=2", "--embedding_dim=16",
                             "--eval_iters=1", "--max_iters=4", "--eval_interval=2", "--device=cpu"])
    events = []
    summary = trainer.train(cfg, on_event=events.append)
    warnings = [e["message"] for e in events if e["event"] == "warning"]
    assert len(warnings) == 3  # evaluations at steps 2 and 4, and the end
    assert all("loss.png was not updated (RuntimeError: no canvas today)" in w for w in warnings)
    assert summary["step"] == 4 and (tmp_path / "run" / "best.pt").exists() and not (tmp_path / "run" / "loss.png").exists()


def test_seq2seq_loss_png_adds_exact_match(tmp_path):
    records = [{"step": 1, "train_loss": 2.0, "elapsed_s": 0.1},
               {"step": 2, "train_loss": 1.5, "elapsed_s": 0.2, "val_loss": 1.6, "val_exact": 0.2, "long_exact": 0.0},
               {"step": 2, "final": True, "final_val_loss": 1.55, "elapsed_s": 0.2}]
    fig = plots.plot_run(records, tmp_path / "seq2seq.png")
    assert len(fig.axes) == 3 and fig.axes[2].get_ylabel() == "exact match"
    assert [line.get_label() for line in fig.axes[2].get_lines()] == ["held-out", "held-out, longer"]
    assert len(plots.plot_run(records[:1], tmp_path / "lm.png").axes) == 2


@pytest.mark.slow
def test_overwrite_removes_the_old_loss_png(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2")).returncode == 0
    first = (out / "loss.png").read_bytes()
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--eval_interval=2", "--overwrite"))
    assert done.returncode == 0, done.stderr
    assert (out / "loss.png").read_bytes() != first


@pytest.mark.slow
def test_runs_are_overlaid_and_labelled_by_the_settings_that_differ(checkpoints, tmp_path):
    runs = load_runs([checkpoints / "copy", checkpoints / "grid"])
    labels = [label for label, _ in runs]
    # the model's settings first; task settings after; cut at four
    assert labels == [f"{checkpoints / 'copy'}: pos_encoding=learned, attention=standard, task=copy, "
                      f"num_symbols=10, +3 more",
                      f"{checkpoints / 'grid'}: pos_encoding=learned_2d, attention=differential, task=grid, "
                      f"num_symbols=5, +3 more"]
    assert all(records for _, records in runs)
    # a run before its first checkpoint is still drawn, labelled by its directory
    early = tmp_path / "early"
    early.mkdir()
    (early / "metrics.jsonl").write_text('{"step": 1, "train_loss": 2.5, "elapsed_s": 0.1}\n')
    assert load_runs([early, checkpoints / "copy"])[0][0] == f"{early} (no checkpoint yet: settings unknown)"
    # one validation curve per run in each panel (loss against step, against time), labelled, a colour each,
    # through the run's own metrics.jsonl records
    dirs = [checkpoints / "copy", checkpoints / "lm"]
    runs = load_runs(dirs)
    fig = plots.plot_runs(runs, tmp_path / "direct.png")
    colours = []
    for ax, x in zip(fig.axes[:2], ("step", "elapsed_s")):
        curves = [line for line in ax.get_lines() if not line.get_label().startswith("_")]  # the labelled ones
        assert [line.get_label() for line in curves] == [label for label, _ in runs]
        for line, run_dir in zip(curves, dirs):
            rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
            points = [(r[x], r["val_loss"]) for r in rows if "val_loss" in r]
            assert len(points) == 2 and list(zip(line.get_xdata(), line.get_ydata())) == points
        colours.append([to_rgb(line.get_color()) for line in curves])
    assert colours[0] == colours[1] and len(set(colours[0])) == 2
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [label for label, _ in runs]
    # visualize.py --runs draws them: each run's colour in both halves of runs.png (the legend is in the left one)
    done = cli("visualize.py", "--runs", *dirs, "--out", tmp_path)
    assert done.returncode == 0, done.stderr
    image = rgb(tmp_path / "runs.png")
    middle = image.shape[1] // 2
    for colour in colours[0]:
        near = (np.abs(image - np.array(colour) * 255) <= 30).all(-1)
        assert near[:, :middle].sum() > 100 and near[:, middle:].sum() > 100, colour


@pytest.mark.slow
def test_runs_refuses_a_directory_that_is_not_a_run(checkpoints, tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        load_runs([checkpoints / "copy", tmp_path])
    done = cli("visualize.py", "--runs", tmp_path, "--out", tmp_path)
    assert done.returncode == 2 and "not a run directory" in done.stderr
    done = cli("visualize.py", "--runs", checkpoints / "copy", "--layer", "0", "--out", tmp_path)
    assert done.returncode == 2 and "--layer goes with --checkpoint, not with --runs" in done.stderr


# ----------------------------------------------------------------------------- the explorer, in a real browser

@pytest.mark.slow
def test_the_explorer_of_a_real_checkpoint_renders_and_switches_heads(checkpoints, tmp_path):
    """visualize.py's attention.html, opened offline in headless Chromium: the heatmap is drawn, and choosing
    another kind or head draws something else."""
    from browser import launch, open_page

    out = tmp_path / "viz"
    done = cli("visualize.py", "--checkpoint", checkpoints / "copy" / "best.pt", "--input", "5 7 9 2", "--out", out,
               "--layer", "0", "--head", "2")
    assert done.returncode == 0, done.stderr
    data = json.loads((out / "attention.json").read_text())
    assert data["view"] == {"layer": 0, "head": 2}
    with launch() as browser, open_page(out / "attention.html", browser) as opened:
        page = opened.page

        def drawn():
            return page.evaluate("document.getElementById('heatmap').toDataURL()")

        blank = page.evaluate("""() => { const c = document.getElementById('heatmap');
                                         const b = document.createElement('canvas');
                                         b.width = c.width; b.height = c.height; return b.toDataURL(); }""")
        assert page.input_value("#kind") == "encoder_self"
        assert (page.input_value("#layer"), page.input_value("#head")) == ("0", "2")  # opens where the PNGs are
        first = drawn()
        assert first != blank
        page.select_option("#kind", "cross")
        state = page.evaluate("({rows: window.explorer.rows, cols: window.explorer.cols})")
        assert state == {"rows": data["tokens"]["target"], "cols": data["tokens"]["source"]}
        cross = drawn()
        assert cross != first
        page.select_option("#head", "1")
        assert drawn() != cross
        page.select_option("#head", "2")
        assert drawn() == cross
        opened.assert_clean()


# ----------------------------------------------------------------------------- attention across checkpoints

def lm_frames(steps):
    """Frames of a made-up two-layer, two-head language model over "abcd": its last head sharpens from
    uniform (causal) towards the diagonal as the step grows."""
    uniform = np.tril(np.ones((4, 4))) / np.arange(1, 5)[:, None]
    frames = []
    for i, step in enumerate(steps):
        t = i / max(1, len(steps) - 1)
        head = (1 - t) * uniform + t * np.eye(4)
        maps = np.stack([np.stack([uniform, head])] * 2).astype(np.float32)  # (2, 2, 4, 4)
        rec = AttentionRecord("lm", list("abcd"), {"decoder_self": maps},
                              {"task": "lm", "attention": "standard", "pos_encoding": "learned"})
        frames.append(Frame(step, f"step {step} · val loss {2.0 - t:.4f}", rec, f"ckpt/step_{step}.pt"))
    return frames


def test_the_strip_draws_one_heatmap_per_checkpoint_and_the_stats_against_step(tmp_path):
    frames = lm_frames([10, 20, 30])
    fig = plots.plot_strip(frames, "decoder_self", 1, 1, tmp_path / "strip3.png")
    maps = [ax for ax in fig.axes if ax.images]
    assert len(maps) == 3
    assert [ax.get_title() for ax in maps] == [f.label for f in frames]
    for ax, frame in zip(maps, frames):
        np.testing.assert_array_equal(ax.images[0].get_array(), frame.record.maps["decoder_self"][1, 1])
        distance, entropy = (float(s[1, 1]) for s in frame.record.stats()["decoder_self"])
        assert ax.get_xlabel() == f"distance {distance:.2f} · entropy {entropy:.2f}"
    assert maps[-1].get_xlabel() == "distance 0.00 · entropy 0.00"  # the diagonal at the last step
    curves = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    distance = curves["mean distance (positions)"]
    entropy = curves["mean entropy (nats)"]
    assert list(distance.get_xdata()) == [10, 20, 30] and list(entropy.get_xdata()) == [10, 20, 30]
    np.testing.assert_allclose(entropy.get_ydata(), [float(f.record.stats()["decoder_self"][1][1, 1]) for f in frames])
    assert distance.get_ydata()[0] > distance.get_ydata()[1] > distance.get_ydata()[2] == 0
    one = plots.plot_strip(frames[:1], "decoder_self", 1, 1, tmp_path / "strip1.png")
    assert len([ax for ax in one.axes if ax.images]) == 1
    assert rgb(tmp_path / "strip3.png").shape[1] > rgb(tmp_path / "strip1.png").shape[1] + 300  # wider per panel


def test_labels_say_the_step_and_the_held_out_exact_match_or_the_validation_loss():
    assert step_label(300, {"val_loss": 0.1, "val_exact": 0.87, "long_exact": 0.0}) == "step 300 · exact 87.0%"
    assert step_label(300, {"val_loss": 1.23456, "val_bpc": 1.8}) == "step 300 · val loss 1.2346"
    assert step_label(300, None) == "step 300"
    assert step_label(300, {"train_loss": 2.0}) == "step 300"


def test_the_evaluation_comes_from_the_checkpoint_else_from_its_runs_metrics(tmp_path):
    run = tmp_path / "run"
    (run / "ckpt").mkdir(parents=True)
    (run / "metrics.jsonl").write_text(
        '{"step": 10, "train_loss": 2.5}\n'                      # a log line without evaluation
        '{"step": 20, "train_loss": 2.0, "val_loss": 1.9, "val_exact": 0.25}\n'
        '{"step": 20, "final": true, "final_val_loss": 1.8}\n')
    saved = {"val_loss": 0.5, "val_exact": 0.5}
    assert evaluation_of(run / "ckpt" / "step_000020.pt", {"step": 20, "evaluation": saved}) == saved
    assert evaluation_of(run / "ckpt" / "step_000020.pt", {"step": 20})["val_exact"] == 0.25  # the run's, above ckpt/
    assert evaluation_of(run / "last.pt", {"step": 20})["val_loss"] == 1.9  # the run's, beside last.pt
    assert evaluation_of(run / "ckpt" / "step_000010.pt", {"step": 10}) is None  # logged, never evaluated
    assert evaluation_of(tmp_path / "alone.pt", {"step": 20}) is None  # no metrics.jsonl


def test_a_directory_without_checkpoints_is_refused(tmp_path):
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    with pytest.raises(CheckpointError, match="no checkpoints in .*ckpt.*: it holds no \\*.pt file"):
        checkpoint_files([tmp_path / "run" / "ckpt"])
    with pytest.raises(CheckpointError, match="the run's kept checkpoints are in"):
        checkpoint_files([tmp_path / "run"])


@pytest.mark.slow
def test_visualize_refuses_a_directory_without_checkpoints(tmp_path):
    (tmp_path / "run" / "ckpt").mkdir(parents=True)
    done = cli("visualize.py", "--checkpoint", tmp_path / "run" / "ckpt", "--input", "1 2", "--out", tmp_path / "viz")
    assert done.returncode == 2 and "no checkpoints in" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "viz").exists()


@pytest.fixture(scope="module")
def over_training(tmp_path_factory):
    """A tiny reverse model at two steps, kept out of order by name in run/ckpt/: a.pt is step 40, saved with its
    evaluation (as the trainer keeps checkpoints); b.pt is step 20, without one (found in run/metrics.jsonl)."""
    root = tmp_path_factory.mktemp("steps")
    run = root / "run"
    args = ["--task=reverse", "--max_len=6", "--eval_long_len=8", f"--out_dir={run}", "--block_size=24",
            "--num_blocks=2", "--num_heads=4", "--embedding_dim=32", "--eval_interval=10", "--batch_size=8",
            "--held_out_size=20", "--device=cpu", "--warmup_iters=2", "--dtype=float32"]
    done = cli("train.py", *args, "--max_iters=20")
    assert done.returncode == 0, done.stderr
    (run / "ckpt").mkdir()
    shutil.copy(run / "last.pt", run / "ckpt" / "b.pt")
    done = cli("train.py", "--resume", f"--out_dir={run}", "--max_iters=40")
    assert done.returncode == 0, done.stderr
    ckpt = ckpt_io.load(run / "last.pt")
    assert ckpt["step"] == 40
    ckpt_io.save(run / "ckpt" / "a.pt", {**ckpt, "evaluation": {"val_loss": 0.25, "val_exact": 0.875}})
    return run


@pytest.mark.slow
def test_visualize_across_checkpoints_writes_strips_frames_and_a_page(over_training, tmp_path):
    run, out = over_training, tmp_path / "viz"
    done = cli("visualize.py", "--checkpoint", run / "ckpt", "--input", "5 7 9 2", "--out", out, "--layer", "0")
    assert done.returncode == 0, done.stderr
    kinds = ("encoder_self", "decoder_self", "cross")
    assert pngs(out) == sorted(f"{kind}_layer0_head0_strip.png" for kind in kinds)
    data = json.loads((out / "attention.json").read_text())
    assert set(data) == {"frames", "view"} and data["view"] == {"layer": 0, "head": 0}
    early = next(r for r in metrics(run) if r["step"] == 20 and "val_loss" in r)
    assert [f["step"] for f in data["frames"]] == [20, 40]  # by step, not by file name
    assert [f["label"] for f in data["frames"]] == [f"step 20 · exact {100 * early['val_exact']:.1f}%",
                                                   "step 40 · exact 87.5%"]
    assert [f["checkpoint"] for f in data["frames"]] == [str(run / "ckpt" / "b.pt"), str(run / "ckpt" / "a.pt")]
    for frame, name in zip(data["frames"], ("b.pt", "a.pt")):
        model, task, cfg = load_model(run / "ckpt" / name)
        rec = record(model, task, cfg, "5 7 9 2", "cpu")  # each frame is that checkpoint's own record
        assert frame["tokens"] == rec.tokens and frame["output"] == rec.output
        np.testing.assert_allclose(np.array(frame["attentions"]["cross"]), rec.maps["cross"], atol=1e-5)
        np.testing.assert_allclose(np.array(frame["stats"]["cross"]["entropy"]), rec.stats()["cross"][1], atol=1e-5)
        assert f"step {frame['step']}: input '5 7 9 2' -> output {rec.output!r}" in done.stdout
    for kind in kinds:
        with Image.open(out / f"{kind}_layer0_head0_strip.png") as image:
            assert image.format == "PNG" and image.size[0] > image.size[1]  # two panels side by side
    html = (out / "attention.html").read_text()
    assert "http://" not in html and "https://" not in html and 'type="range"' in html
    # several files, named one by one, are the same frames
    again = tmp_path / "again"
    done = cli("visualize.py", "--checkpoint", run / "ckpt" / "a.pt", run / "ckpt" / "b.pt", "--input", "5 7 9 2",
               "--out", again, "--layer", "0")
    assert done.returncode == 0, done.stderr
    assert json.loads((again / "attention.json").read_text()) == data


@pytest.mark.slow
def test_visualize_across_checkpoints_refuses_another_model_and_the_wrong_input(over_training, checkpoints, tmp_path):
    ckpt = over_training / "ckpt"
    done = cli("visualize.py", "--checkpoint", ckpt / "a.pt", checkpoints / "copy" / "best.pt", "--input", "5 7",
               "--out", tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert (f"{str(ckpt / 'a.pt')!r} and {str(checkpoints / 'copy' / 'best.pt')!r} are checkpoints of different "
            f"models (task: 'reverse' vs 'copy'") in done.stderr
    done = cli("visualize.py", "--checkpoint", ckpt, "--text", "abc", "--out", tmp_path)
    assert done.returncode == 2 and "--text is for language-model checkpoints" in done.stderr
    done = cli("visualize.py", "--checkpoint", ckpt, "--input", "5 7", "--head", "4", "--out", tmp_path)
    assert done.returncode == 2 and "--head 4 is not allowed; this model has 4 heads: 0..3" in done.stderr
    assert pngs(tmp_path) == []


@pytest.mark.slow
def test_the_explorer_across_checkpoints_moves_with_its_slider(over_training, tmp_path):
    """The page of two checkpoints opens on the last; the slider (by keyboard) shows the other one's map and its
    own target tokens, and back."""
    from browser import explorer_view, launch, open_page

    out = tmp_path / "viz"
    done = cli("visualize.py", "--checkpoint", over_training / "ckpt", "--input", "5 7 9 2", "--out", out)
    assert done.returncode == 0, done.stderr
    frames = json.loads((out / "attention.json").read_text())["frames"]
    with launch() as browser, open_page(out / "attention.html", browser) as opened:
        page = opened.page

        assert page.locator("#step").is_visible()
        page.select_option("#kind", "cross")
        last = explorer_view(page)
        assert (last["frame"], last["step"], last["drawn"]) == (1, 40, "1")
        assert last["rows"] == frames[1]["tokens"]["target"]
        assert page.inner_text("#step-label") == "step 40 · exact 87.5%"
        page.focus("#step")
        page.keyboard.press("ArrowLeft")
        first = explorer_view(page)
        assert (first["frame"], first["step"], first["drawn"]) == (0, 20, "0")
        assert first["rows"] == frames[0]["tokens"]["target"]
        assert first["pixels"] != last["pixels"]
        assert page.input_value("#kind") == "cross"  # the kind, layer and head stay
        assert page.inner_text("#step-label") == frames[0]["label"]
        page.keyboard.press("ArrowRight")
        assert explorer_view(page)["pixels"] == last["pixels"]
        opened.assert_clean()
