"""Encoder, encoder-decoder, masks, padding, decoding and the toy tasks."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from lm import config
from lm.config import ModelConfig
from lm.generate import beam_search, greedy_decode, length_penalty
from lm.jobs import Seq2SeqJob, collate
from lm.nn import Encoder, EncoderDecoder, MultiHeadAttention
from lm.nn import token_loss
from lm.data.padding import pad_sequences, unpad
from lm.data.tasks import BOS, EOS, PAD, make_task
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
    for module in (MultiHeadAttention(ModelConfig(embedding_dim=16, num_heads=2)).eval(), Encoder(model_cfg()).eval()):
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
    attn = MultiHeadAttention(ModelConfig(embedding_dim=16, num_heads=2)).eval()
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
    with pytest.raises(ValueError, match=r"length 2 is shorter than the longest sequence \(3\)"):
        pad_sequences(seqs, PAD, length=2)


@pytest.mark.parametrize("share", [True, False])
def test_shared_and_separate_embeddings(share):
    model = seq2seq(share=share)
    assert (model.tgt_embed is model.encoder.embed) == share
    assert model.head.weight is model.tgt_embed.tok.weight


@pytest.mark.parametrize("pos, cross_rope", [(pos, False) for pos in POS] + [("learned", True), ("rope", True)])
def test_cached_and_uncached_decoding_agree(pos, cross_rope):
    torch.manual_seed(0)
    cfg = model_cfg(pos)
    cfg.cross_rope = cross_rope
    model = EncoderDecoder(cfg).eval()
    src, mask = pad_sequences([[3, 4, 5, 6], [7, 8], [9, 10, 11, 12, 3, 4]], PAD)
    decoders = [lambda **k: greedy_decode(model, src, mask, 12, BOS, EOS, PAD, **k)]
    decoders += [lambda beam=beam, alpha=alpha, **k: beam_search(model, src, mask, 12, BOS, EOS, PAD, beam=beam,
                                                                 alpha=alpha, **k)
                 for beam in (1, 4, 9) for alpha in (0.0, 0.6)]
    for decode in decoders:
        assert torch.equal(decode(use_cache=True), decode(use_cache=False))


@pytest.mark.parametrize("cross_rope", [False, True])
def test_cross_rope_makes_cross_attention_depend_on_the_offset(cross_rope):
    """Identical tokens and no positions: every source state is the same, and so is every decoder input, so
    without cross_rope each query spreads its weight evenly; with it the scores depend on t - s alone, so
    w[t, s] / w[t, s'] = w[t + 1, s + 1] / w[t + 1, s' + 1] (weights along each diagonal keep their ratios)."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=13, block_size=24, num_blocks=1, num_heads=2, embedding_dim=16, pos_encoding="none",
                      cross_rope=cross_rope)
    model = EncoderDecoder(cfg).eval()
    with torch.no_grad():  # scores far from 0: the weights then tell offsets apart clearly
        for p in (model.blocks[0].cross_attn.q_proj.weight, model.blocks[0].cross_attn.kv_proj.weight):
            p.mul_(40)
    src, tgt = torch.full((1, 8), 5), torch.full((1, 6), 5)
    with torch.no_grad():
        _, maps = model(src, tgt, return_weights=True)
    w = maps.cross[0][0].double()  # (heads, T, S)
    if not cross_rope:
        assert torch.allclose(w, torch.full_like(w, 1 / 8))
        return
    assert not torch.allclose(w, torch.full_like(w, 1 / 8), atol=1e-2)
    ratio = w[:, :, :-1] / w[:, :, 1:]  # (heads, T, S - 1): neighbours along a row
    assert torch.allclose(ratio[:, :-1, :-1], ratio[:, 1:, 1:], rtol=1e-3)  # float32 scores: rounding only


# ----------------------------------------------------------------------------- beam search against a known model

class PrefixCache:
    """The tokens fed so far, per row; follows beam search's reordering like the real cache."""

    def __init__(self):
        self.tokens = None  # (B, T)

    def append(self, new):
        self.tokens = new if self.tokens is None else torch.cat([self.tokens, new], dim=1)
        return self.tokens

    def reorder(self, index):
        self.tokens = self.tokens.index_select(0, index)


class TableModel:
    """A stand-in for EncoderDecoder whose next-token probabilities are a table indexed by
    (source id, tokens so far after BOS); a prefix not in the table ends with EOS for sure.
    Every sequence's probability is known, so beam search can be checked by brute force.
    It has the interface the decoders use: eval, encode, decode (with or without a cache), new_cache."""

    def __init__(self, table, vocab):
        self.table, self.vocab = table, vocab

    def eval(self):
        return self

    def encode(self, src, src_mask=None, pos=None):
        return src[:, :1, None].float()  # (B, 1, 1): the memory is the source id

    def new_cache(self):
        return [PrefixCache()]

    def probs(self, source, prefix):
        eos_only = [1.0 if i == EOS else 0.0 for i in range(self.vocab)]
        return self.table.get((source, prefix), eos_only)

    def decode(self, tgt, memory, src_mask=None, *, cache=None, pos=None):
        seen = cache[0].append(tgt) if cache is not None else tgt  # (B, T), BOS first
        rows = [self.probs(int(m), tuple(p[1:])) for m, p in zip(memory[:, 0, 0], seen.tolist())]
        return torch.tensor(rows).log()[:, None], None  # (B, 1, V) log-probabilities as logits


def exhaustive_best(model, source, max_len, alpha, symbols):
    """argmax over every finished sequence of at most max_len tokens of log P(Y) / lp(Y)."""
    best, best_score = None, float("-inf")
    for n in range(max_len):
        for body in itertools.product(symbols, repeat=n):
            seq, logp = list(body) + [EOS], 0.0
            for t, token in enumerate(seq):
                logp += torch.tensor(model.probs(source, tuple(seq[:t]))[token]).log().item()
            score = logp / length_penalty(torch.tensor(len(seq)), alpha).item()
            if score > best_score:
                best, best_score = seq, score
    return best


def random_table(sources, symbols, max_len, vocab, seed):
    """Random next-token probabilities for every prefix; PAD and BOS are never produced."""
    g = torch.Generator().manual_seed(seed)
    table = {}
    for source in sources:
        for n in range(max_len):
            for prefix in itertools.product(symbols, repeat=n):
                p = torch.zeros(vocab)
                p[[EOS, *symbols]] = torch.softmax(2 * torch.randn(len(symbols) + 1, generator=g), 0)
                table[(source, prefix)] = p.tolist()
    return table


def decoded(out):
    """(B, L) decoder output -> per row the tokens up to and including EOS."""
    rows = []
    for row in out.tolist():
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows


def test_finished_hypotheses_leave_the_beam_and_the_best_normalised_one_wins():
    """With K = 2: [EOS] is the most likely first step, [a] and [b] tie behind it. Keeping the
    finished [EOS] in a slot would prune [b], whose continuation [b, EOS] is the best hypothesis
    once lengths are normalised (alpha 0.6); without length normalisation [EOS] is the best."""
    a, b, c = 3, 4, 5
    table = {(0, ()): [0, 0, 0.34, 0.335, 0.325, 0],
             (0, (a,)): [0, 0, 0.45, 0, 0, 0.55],
             (0, (b,)): [0, 0, 0.99, 0, 0, 0.01]}
    model = TableModel(table, vocab=6)
    src = torch.zeros(1, 1, dtype=torch.long)
    for alpha, expected in ((0.6, [b, EOS]), (0.0, [EOS])):
        assert exhaustive_best(model, 0, 4, alpha, [a, b, c]) == expected
        for use_cache in (True, False):
            out = beam_search(model, src, None, 4, BOS, EOS, PAD, beam=2, alpha=alpha, use_cache=use_cache)
            assert decoded(out) == [expected], (alpha, out)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_a_beam_as_wide_as_every_candidate_finds_the_exhaustive_optimum(alpha):
    """With K at least the number of extensions at every step, nothing is pruned: beam search is exact
    (and its early stop must not cut off the optimum)."""
    symbols, max_len, vocab = [3, 4, 5], 4, 6
    sources = list(range(4))
    model = TableModel(random_table(sources, symbols, max_len, vocab, seed=0), vocab)
    src = torch.tensor(sources)[:, None]
    wide = len(symbols) ** (max_len - 1) * (len(symbols) + 1)  # extensions at the last step
    expected = [exhaustive_best(model, s, max_len, alpha, symbols) for s in sources]
    for use_cache in (True, False):
        out = beam_search(model, src, None, max_len, BOS, EOS, PAD, beam=wide, alpha=alpha, use_cache=use_cache)
        assert decoded(out) == expected
        for row, seq in zip(out.tolist(), expected):
            assert row[len(seq):] == [PAD] * (out.size(1) - len(seq))  # PAD after EOS
    for beam in (2, 3, 5):  # narrower beams: no guarantee of the optimum, but the cache never changes the result
        runs = [beam_search(model, src, None, max_len, BOS, EOS, PAD, beam=beam, alpha=alpha, use_cache=c)
                for c in (True, False)]
        assert torch.equal(runs[0], runs[1])


def test_beam_of_one_with_no_length_penalty_is_greedy():
    model = seq2seq()
    src, mask = pad_sequences([[3, 4, 5, 6], [7, 8], [9, 10, 11]], PAD)
    greedy = greedy_decode(model, src, mask, 10, BOS, EOS, PAD)
    assert torch.equal(beam_search(model, src, mask, 10, BOS, EOS, PAD, beam=1, alpha=0.0), greedy)
    # and on the table model, where greedy often stops early and EOS is often the runner-up
    symbols, max_len, vocab = [3, 4, 5], 4, 6
    sources = list(range(8))
    table = TableModel(random_table(sources, symbols, max_len, vocab, seed=1), vocab)
    src = torch.tensor(sources)[:, None]
    greedy = greedy_decode(table, src, None, max_len, BOS, EOS, PAD)
    assert torch.equal(beam_search(table, src, None, max_len, BOS, EOS, PAD, beam=1, alpha=0.0), greedy)


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


def smoothed_target(targets, vocab, eps, never):
    """The label-smoothed target distribution q, built explicitly: 1 - eps on the target, eps spread
    uniformly over the valid classes, 0 on the classes in `never`."""
    valid = [c for c in range(vocab) if c not in never]
    q = torch.zeros(len(targets), vocab)
    q[:, valid] = eps / len(valid)
    q[torch.arange(len(targets)), targets] += 1 - eps
    return q


def test_loss_ignores_padding_and_smooths_labels():
    model = seq2seq()
    src, src_mask, tgt_in, tgt_out = collate([([3, 4], [4, 3]), ([5, 6, 7, 8], [8, 7, 6, 5])])
    logits, _ = model(src, tgt_in, src_mask)
    loss = token_loss(logits, tgt_out, ignore_index=PAD)
    real = tgt_out != PAD
    manual = F.cross_entropy(logits[real], tgt_out[real])
    torch.testing.assert_close(loss, manual)
    # the training loss of a seq2seq job smooths onto the valid outputs only: never PAD or BOS
    cfg = config.load(None, ["--task=copy", "--label_smoothing=0.1", "--max_len=4", "--eval_long_len=4",
                             "--held_out_size=2"])
    job = Seq2SeqJob(cfg, None, None, lambda event: None)
    smoothed, _ = job.loss(model, (src, src_mask, tgt_in, tgt_out, None, None), torch.device("cpu"))
    q = smoothed_target(tgt_out[real], 13, 0.1, never=(PAD, BOS))
    torch.testing.assert_close(smoothed, -(q * logits[real].log_softmax(-1)).sum(-1).mean())
    assert smoothed.item() != pytest.approx(loss.item())
    # and onto every class when nothing is excluded
    everywhere = token_loss(logits, tgt_out, ignore_index=PAD, label_smoothing=0.1)
    torch.testing.assert_close(everywhere, F.cross_entropy(logits[real], tgt_out[real], label_smoothing=0.1))


def test_label_smoothing_puts_no_probability_on_pad_or_bos():
    """loss = (1 - eps) (-log p_y) + eps mean_{c valid} (-log p_c) = sum_c -q_c log p_c, with q_PAD = q_BOS = 0."""
    torch.manual_seed(0)
    eps, V = 0.2, 7
    logits = torch.randn(2, 3, V, requires_grad=True)
    targets = torch.tensor([[3, 4, EOS], [6, PAD, PAD]])
    loss = token_loss(logits, targets, ignore_index=PAD, label_smoothing=eps, no_smooth_ids=[PAD, BOS])
    real = targets != PAD
    q = smoothed_target(targets[real], V, eps, never=(PAD, BOS))
    assert (q[:, [PAD, BOS]] == 0).all() and torch.allclose(q.sum(-1), torch.ones(4))
    p = logits[real].softmax(-1)
    torch.testing.assert_close(loss, -(q * p.log()).sum(-1).mean())
    logp = p.log()
    by_formula = (1 - eps) * -logp[torch.arange(4), targets[real]] + eps * -logp[:, 2:].mean(-1)
    torch.testing.assert_close(loss, by_formula.mean())
    # d loss / d logits = (p - q) / n: PAD and BOS logits are only ever pushed down, padding gets nothing
    loss.backward()
    torch.testing.assert_close(logits.grad[real], (p - q).detach() / 4)
    assert (logits.grad[real][:, [PAD, BOS]] > 0).all()
    assert (logits.grad[~real] == 0).all()
    # settings that make no sense are named
    with pytest.raises(ValueError, match="no_smooth_ids \\[7\\]"):
        token_loss(logits, targets, ignore_index=PAD, label_smoothing=eps, no_smooth_ids=[PAD, 7])


def test_noam_schedule():
    cfg = config.load(None, ["--lr=1.0", "--lr_schedule=noam", "--warmup_iters=100"])
    assert lr_at(49, cfg, 1000) == pytest.approx(0.5)
    assert lr_at(99, cfg, 1000) == pytest.approx(1.0)
    assert lr_at(399, cfg, 1000) == pytest.approx(0.5)


def test_task_configs_are_validated():
    with pytest.raises(config.ConfigError, match="epochs"):
        config.load(None, ["--task=copy", "--epochs=1", "--max_iters=5"])
    with pytest.raises(config.ConfigError, match="generated tasks need max_iters"):
        config.load(None, ["--task=copy", "--max_iters=null"])
    with pytest.raises(config.ConfigError, match="the number base"):
        config.load(None, ["--task=add", "--num_symbols=16", "--max_iters=5"])


def test_block_size_too_small_for_the_task(tmp_path):
    cfg = config.load(None, ["--task=copy", "--max_iters=5", "--block_size=10", f"--out_dir={tmp_path}"])
    with pytest.raises(config.ConfigError, match="block_size: 10 is too small"):
        train(cfg)


@pytest.mark.slow
def test_short_copy_run_learns_the_task(tmp_path):
    cfg = config.load(None, ["--task=copy", "--max_len=8", "--eval_long_len=10", "--held_out_size=200",
                             "--block_size=12", "--num_blocks=2", "--num_heads=4", "--embedding_dim=64",
                             "--batch_size=64", "--max_iters=300", "--eval_interval=300", "--lr=3e-3",
                             "--min_lr=3e-4", "--warmup_iters=50", "--device=cpu", f"--out_dir={tmp_path}",
                             "--dtype=float32"])  # not auto (bfloat16 on some CPUs): the same run everywhere

    def on_event(event):  # checked at the start: a run in another dtype fails at once, not after training
        if event["event"] == "start":
            assert event["dtype"] == "float32", event["dtype_reason"]

    summary = train(cfg, on_event=on_event)
    assert summary["final_val_exact"] >= 0.95, summary
    assert {"final_long_exact", "final_long_token_acc", "final_val_token_acc"} <= summary.keys()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[-2]["val_exact"] == summary["final_val_exact"]
