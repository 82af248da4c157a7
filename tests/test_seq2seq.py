"""Encoder, encoder-decoder, masks, padding, decoding and the toy tasks."""

import json

import pytest
import torch

from lm import config
from lm.config import ModelConfig
from lm.generate import beam_search, greedy_decode
from lm.jobs import collate
from lm.nn import Encoder, EncoderDecoder, MultiHeadAttention
from lm.padding import pad_sequences, unpad
from lm.tasks import BOS, EOS, PAD, make_task
from lm.trainer import lr_at, train

POS = ["learned", "sinusoidal", "none"]


def model_cfg(pos="learned", vocab=13, share=True):
    return ModelConfig(vocab_size=vocab, block_size=24, num_blocks=2, num_heads=2, embedding_dim=16,
                       pos_encoding=pos, share_embeddings=share)


def seq2seq(pos="learned", share=True):
    torch.manual_seed(0)
    return EncoderDecoder(model_cfg(pos, share=share)).eval()


def test_encoder_is_bidirectional():
    torch.manual_seed(0)
    enc = Encoder(model_cfg()).eval()
    src = torch.randint(3, 13, (2, 8))
    states, _ = enc(src)
    changed = src.clone()
    changed[:, -1] = (changed[:, -1] - 2) % 10 + 3
    states2, _ = enc(changed)
    assert states.shape == (2, 8, 16)
    assert not torch.allclose(states[:, 0], states2[:, 0])  # a later token changes an earlier state


@pytest.mark.parametrize("pos", POS)
def test_decoder_is_causal(pos):
    model = seq2seq(pos)
    src, tgt = torch.randint(3, 13, (2, 6)), torch.randint(3, 13, (2, 9))
    memory = model.encode(src)
    logits, _ = model.decode(tgt, memory)
    changed = tgt.clone()
    changed[:, 5:] = (changed[:, 5:] - 2) % 10 + 3
    logits2, _ = model.decode(changed, memory)
    assert torch.equal(logits[:, :5], logits2[:, :5])
    assert not torch.allclose(logits[:, 5:], logits2[:, 5:])


@pytest.mark.parametrize("pos", POS)
def test_padding_never_changes_real_positions(pos):
    model = seq2seq(pos)
    pairs = [([3, 4, 5], [5, 4, 3]), ([6, 7, 8, 9, 10, 11, 12], [12, 11, 10, 9, 8, 7, 6])]
    alone = collate(pairs[:1])
    batched = list(collate(pairs))
    logits_alone, _ = model(alone[0], alone[2], alone[1])
    logits_batched, _ = model(batched[0], batched[2], batched[1])
    n = len(pairs[0][1]) + 1
    torch.testing.assert_close(logits_batched[:1, :n], logits_alone[:, :n], atol=1e-5, rtol=1e-5)
    # whatever sits in the padded positions is invisible
    batched[0] = batched[0].masked_fill(~batched[1], 9)
    logits_junk, _ = model(batched[0], batched[2], batched[1])
    torch.testing.assert_close(logits_junk[:1, :n], logits_batched[:1, :n], atol=0, rtol=0)


def test_arbitrary_mask_gives_masked_positions_exactly_zero_influence():
    torch.manual_seed(0)
    x = torch.randn(1, 5, 16)
    allowed = torch.ones(5, 5, dtype=torch.bool)
    allowed[:, 3] = False  # nobody attends to position 3 ...
    allowed[3, 3] = True  # ... except position 3 itself
    for module in (MultiHeadAttention(16, 2).eval(), Encoder(model_cfg()).eval()):
        if isinstance(module, Encoder):
            inp = torch.randint(3, 13, (1, 5))
            other = inp.clone()
            other[0, 3] = (other[0, 3] - 2) % 10 + 3
            run = lambda t, m: module(t, attn_mask=m)[0]
        else:
            inp, other = x, x.clone()
            other[0, 3] = torch.randn(16)
            run = lambda t, m: module(t, attn_mask=m)[0]
        keep = [0, 1, 2, 4]
        assert torch.equal(run(inp, allowed)[0, keep], run(other, allowed)[0, keep])
        full = torch.ones(5, 5, dtype=torch.bool)
        assert not torch.allclose(run(inp, full)[0, keep], run(other, full)[0, keep])


def test_explicit_attention_weights_respect_the_mask():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 2).eval()
    allowed = torch.rand(4, 4) > 0.5
    allowed.fill_diagonal_(True)
    _, w = attn(torch.randn(2, 4, 16), attn_mask=allowed, return_weights=True)
    assert (w[:, :, ~allowed] == 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 4))


def test_pad_and_unpad_round_trip():
    seqs = [[5, 6, 7], [], [8]]
    ids, mask = pad_sequences(seqs, PAD)
    assert ids.shape == (3, 3) and mask.tolist() == [[True] * 3, [False] * 3, [True, False, False]]
    assert unpad(ids, mask) == seqs
    with pytest.raises(ValueError):
        pad_sequences(seqs, PAD, length=2)


@pytest.mark.parametrize("share", [True, False])
def test_shared_and_separate_embeddings(share):
    model = seq2seq(share=share)
    assert (model.tgt_embed is model.encoder.embed) == share
    assert model.head.weight is model.tgt_embed.tok.weight


@pytest.mark.parametrize("pos", POS)
def test_cached_and_uncached_decoding_agree(pos):
    model = seq2seq(pos)
    src, mask = pad_sequences([[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 3, 4]], PAD)
    for decode in (lambda **k: greedy_decode(model, src, mask, 12, BOS, EOS, PAD, **k),
                   lambda **k: beam_search(model, src, mask, 12, BOS, EOS, PAD, beam=4, **k)):
        assert torch.equal(decode(use_cache=True), decode(use_cache=False))


def test_beam_of_one_is_greedy_and_beams_never_score_worse():
    model = seq2seq()
    src, mask = pad_sequences([[3, 4, 5, 6], [7, 8], [9, 10, 11]], PAD)
    greedy = greedy_decode(model, src, mask, 10, BOS, EOS, PAD)
    assert torch.equal(beam_search(model, src, mask, 10, BOS, EOS, PAD, beam=1, alpha=0.0), greedy)

    def logprob(out):
        tgt_in = torch.cat([torch.full((out.size(0), 1), BOS), out[:, :-1]], dim=1)
        logp = torch.log_softmax(model(src, tgt_in, mask)[0], -1).gather(-1, out[..., None])[..., 0]
        return (logp * (out != PAD)).sum(-1)

    beam = beam_search(model, src, mask, 10, BOS, EOS, PAD, beam=5, alpha=0.0)
    assert (logprob(beam) >= logprob(greedy) - 1e-5).all()


@pytest.mark.parametrize("name", ["copy", "reverse", "sort", "add"])
def test_task_generators_produce_correct_pairs(name):
    task = make_task(name, 10, max_len=6)
    g = torch.Generator().manual_seed(0)
    pairs = task.examples(300, 1, 6, g)
    for src_ids, tgt_ids in pairs:
        src, tgt = task.from_ids(src_ids), task.from_ids(tgt_ids)
        assert all(i >= 3 for i in src_ids + tgt_ids)  # no special tokens inside
        if name == "copy":
            assert tgt == src
        elif name == "reverse":
            assert tgt == src[::-1]
        elif name == "sort":
            assert tgt == sorted(src)
        else:
            a, b = task.render(src).split("+")
            assert int(task.render(tgt)) == int(a) + int(b)
            assert max(len(a), len(b)) <= 6 and (len(a) == 1 or a[0] != "0")
    lengths = {len(task.from_ids(s)) for s, _ in pairs}
    if name != "add":
        assert lengths == set(range(1, 7))
    else:
        assert lengths == {13}  # two 6-digit numbers and '+': fixed width
        assert {max(len(n) for n in task.render(task.from_ids(s)).split("+")) for s, _ in pairs} == set(range(1, 7))
    again = task.examples(300, 1, 6, torch.Generator().manual_seed(0))
    assert again == pairs  # a seed fixes the set


def test_add_in_another_base_and_parsing():
    task = make_task("add", 2, max_len=4)
    assert task._digits(6, 4) == [0, 1, 1, 0] and task.render(task._digits(6, 4)) == "110"  # LSB first, padded
    assert task.parse("110 + 1") == [0, 1, 1, 0, task.plus, 1, 0, 0, 0]
    assert task.render(task.parse("0110+1")) == "110+1"
    with pytest.raises(ValueError, match="more than 4 digits"):
        task.parse("10101+1")
    with pytest.raises(ValueError, match="digits 0..1"):
        task.parse("12+1")
    with pytest.raises(ValueError, match="lm, copy, reverse, sort, add"):
        make_task("multiply", 10)


def test_loss_ignores_padding_and_smooths_labels():
    model = seq2seq()
    src, src_mask, tgt_in, tgt_out = collate([([3, 4], [4, 3]), ([5, 6, 7, 8], [8, 7, 6, 5])])
    logits, loss = model(src, tgt_in, src_mask, targets=tgt_out, pad_id=PAD)
    real = tgt_out != PAD
    manual = torch.nn.functional.cross_entropy(logits[real], tgt_out[real])
    torch.testing.assert_close(loss, manual)
    _, smoothed = model(src, tgt_in, src_mask, targets=tgt_out, pad_id=PAD, label_smoothing=0.1)
    assert smoothed.item() != pytest.approx(loss.item())


def test_noam_schedule():
    cfg = config.load(None, ["--lr=1.0", "--lr_schedule=noam", "--warmup_iters=100"])
    assert lr_at(49, cfg, 1000) == pytest.approx(0.5)
    assert lr_at(99, cfg, 1000) == pytest.approx(1.0)
    assert lr_at(399, cfg, 1000) == pytest.approx(0.5)


def test_task_configs_are_validated():
    with pytest.raises(config.ConfigError, match="epochs"):
        config.load(None, ["--task=copy", "--epochs=1", "--max_iters=5"])
    with pytest.raises(config.ConfigError, match="max_iters"):
        config.load(None, ["--task=copy"])
    with pytest.raises(config.ConfigError, match="the number base"):
        config.load(None, ["--task=add", "--num_symbols=16", "--max_iters=5"])


def test_block_size_too_small_for_the_task(tmp_path):
    cfg = config.load(None, ["--task=copy", "--max_iters=5", "--block_size=10", f"--out_dir={tmp_path}"])
    with pytest.raises(config.ConfigError, match="block_size: 10 is too small"):
        train(cfg)


def test_short_copy_run_learns_the_task(tmp_path):
    cfg = config.load(None, ["--task=copy", "--max_len=8", "--eval_long_len=10", "--held_out_size=200",
                             "--block_size=12", "--num_blocks=2", "--num_heads=4", "--embedding_dim=64",
                             "--batch_size=64", "--max_iters=300", "--eval_interval=300", "--lr=3e-3",
                             "--min_lr=3e-4", "--warmup_iters=50", "--device=cpu", f"--out_dir={tmp_path}"])
    summary = train(cfg)
    assert summary["final_val_exact"] >= 0.95, summary
    assert {"final_long_exact", "final_long_token_acc", "final_val_token_acc"} <= summary.keys()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-2]["val_exact"] == summary["final_val_exact"]
