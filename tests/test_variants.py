"""Every model variant by name on every model kind: pos_encoding (1D: learned, sinusoidal, rope, none,
randomized; 2D: learned_2d, sinusoidal_2d, rope_2d) x attention (standard, differential) x norm_placement
(pre, post), on GPT, Encoder and EncoderDecoder.

Causality and bidirectionality, cached == uncached decoding, SDPA == the explicit path, padding, learning
tasks that need attention and positions, RoPE's relative scores, config errors, checkpoints through the real
CLIs, and lm.data.layout.

Positions: GPT always uses its default (consecutive) ones. The Encoder and EncoderDecoder use their default
for the consecutive encodings and for randomized ("default" mode), and the positions lm.data.layout gives a
GridTask batch for the 2D encodings and for randomized ("layout" mode).
"""

import itertools
import math
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import offline_text
from helpers import TIMEOUT, grid_reference, popen, tiny
from lm import config
from lm.checkpoint import load as load_checkpoint
from lm.data.spell import SpellTask
from lm.data.graphs import GraphTask
from lm.jobs import GraphJob, SpellJob
from lm.checkpoint import load_model
from lm.config import ConfigError, ModelConfig
from lm.generate import beam_search, generate, greedy_decode
from lm.jobs import collate
from lm.data.layout import positions
from lm.nn import GPT, Encoder, EncoderDecoder, token_loss
from lm.nn.block import ACTIVATIONS, ATTENTION, NORM_PLACEMENTS, NORMS as NORM_LAYERS, Block, make_attention
from lm.nn.position import POSITIONAL, Rotary2DPositional, RotaryPositional, make_positional
from lm.optim import Muon, Optimizers, muon_parameters
from lm.data.tasks import BOS, EOS, PAD, CopyTask, GridTask, ReverseTask, make_task
from lm.data.tasks import TASKS as TASK_CLASSES

POS_1D = ("learned", "sinusoidal", "rope", "none", "randomized")
POS_2D = ("learned_2d", "sinusoidal_2d", "rope_2d")
ATTENTIONS = ("standard", "differential")
NORMS = ("pre", "post")

VARIANTS_1D = list(itertools.product(POS_1D, ATTENTIONS, NORMS))  # GPT
VARIANTS = list(itertools.product(POS_1D + POS_2D, ATTENTIONS, NORMS))  # every variant by name
# Encoder / EncoderDecoder: (pos, attention, norm, where the positions come from)
CASES = [(p, a, n, mode) for p, a, n in VARIANTS
         for mode in (("layout",) if p in POS_2D else ("default", "layout") if p == "randomized" else ("default",))]

VOCAB = 13  # 3 specials + 10 symbols: CopyTask(10), GridTask(9) (9 colours and the separator)
BLOCK = 24
GRID = GridTask(9, "rotate")
SHAPES = ((3, 3), (2, 3), (1, 2))  # grids of 11, 7 and 2 source tokens: a padded batch
KINDS = {"gpt": GPT, "encoder": Encoder, "seq2seq": EncoderDecoder}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.one_thread)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def build(kind, pos, attn, norm, block_size=BLOCK, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=VOCAB, block_size=block_size, num_blocks=2, num_heads=2, embedding_dim=16,
                      pos_encoding=pos, attention=attn, norm_placement=norm)
    return KINDS[kind](cfg).eval()


def set_sdpa(model, on):
    """use_sdpa on every attention module (standard and differential alike)."""
    modules = [m for m in model.modules() if hasattr(m, "use_sdpa")]
    assert modules
    for m in modules:
        m.use_sdpa = on


def change(x, g):
    """Other symbol tokens (3..VOCAB-1) than x, at every position."""
    return (x - 3 + torch.randint(1, VOCAB - 3, x.shape, generator=g)) % (VOCAB - 3) + 3


def grid_pairs(shapes=SHAPES, seed=0):
    """(source ids, target ids) of rotated grids of these shapes."""
    g = gen(seed)
    return [tuple(GRID.to_ids(s) for s in GRID.grid_pair(h, w, g)) for h, w in shapes]


def layout(pos, mode, pairs, g=None):
    """(src_pos, tgt_pos) for these pairs: None for the model's default, else lm.data.layout's (all L slots)."""
    if mode == "default":
        return None, None
    src_pos, tgt_pos = positions(GRID, pos, [s for s, _ in pairs], BLOCK, g)
    assert src_pos is not None and tgt_pos is not None
    return src_pos, tgt_pos


def upto(tgt_pos, t):
    return None if tgt_pos is None else tgt_pos[:, :t]


def close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def test_parametrisation_covers_every_name():
    assert set(POS_1D + POS_2D) == set(config.POS_ENCODINGS) == set(POSITIONAL)
    assert set(POS_2D) == set(config.GRID_ENCODINGS)
    assert set(ATTENTIONS) == set(config.ATTENTIONS) == set(ATTENTION)
    assert set(NORMS) == set(config.NORM_PLACEMENTS) == set(NORM_PLACEMENTS)


@pytest.mark.parametrize("field,registry", [
    ("pos_encoding", POSITIONAL), ("attention", ATTENTION), ("norm", NORM_LAYERS), ("activation", ACTIVATIONS),
    ("norm_placement", NORM_PLACEMENTS),
])
def test_every_named_setting_has_its_registry(field, registry):
    """A Literal of ModelConfig and the registry that builds its names list the same names, in the same order."""
    assert config.choices(ModelConfig, field) == tuple(registry)
    assert tuple(name for name, cls in POSITIONAL.items() if cls.grid) == config.GRID_ENCODINGS


def test_every_task_name_has_its_task():
    """DataConfig.task's names: lm (the language-model job), one class per generated task, in one order,
    spell (sentences of a corpus: its SpellTask and SpellJob) and graph (its GraphTask and GraphJob)."""
    assert config.TASKS == ("lm", *TASK_CLASSES, "spell", "graph")
    assert all(TASK_CLASSES[name].name == name for name in TASK_CLASSES)
    assert SpellTask.name == "spell" and SpellJob.__name__ == "SpellJob"
    assert GraphTask.name == "graph" and GraphJob.__name__ == "GraphJob"


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("attn,norm", list(itertools.product(ATTENTIONS, NORMS)))
def test_variant_names_build_what_they_say(kind, attn, norm):
    """attention picks the module of every self- and cross-attention; norm_placement decides where the
    LayerNorms sit: post normalises every block's output (and needs no final norm), pre does not."""
    model = build(kind, "learned", attn, norm)
    attns = [m for m in model.modules() if hasattr(m, "use_sdpa")]
    assert len(attns) == (6 if kind == "seq2seq" else 2) and all(type(m) is ATTENTION[attn] for m in attns)
    if attn == "differential":
        assert sorted({round(m.lambda_init, 6) for m in attns}) == [0.2, round(0.8 - 0.6 * math.exp(-0.3), 6)]
    outputs = []  # of the decoder's blocks for seq2seq
    hooks = [b.register_forward_hook(lambda mod, inp, out: outputs.append(out[0])) for b in model.blocks]
    src = torch.randint(3, VOCAB, (2, 7), generator=gen(0))
    model(src, src) if kind == "seq2seq" else model(src)
    for h in hooks:
        h.remove()
    assert len(outputs) == 2
    for out in outputs:
        normalised = torch.allclose(out.mean(-1), torch.zeros(()), atol=1e-5) and \
            torch.allclose(out.var(-1, unbiased=False), torch.ones(()), atol=1e-3)
        assert normalised == (norm == "post")
    assert isinstance(model.ln_f, nn.Identity if norm == "post" else nn.LayerNorm)


def test_positional_encodings_add_what_they_say():
    C, bs = 16, 24
    pos2d = torch.tensor([[0, 0], [1, 3], [5, 2]])
    learned = make_positional(ModelConfig(block_size=bs, embedding_dim=C, pos_encoding="learned_2d"))
    torch.testing.assert_close(learned(pos2d), torch.cat([learned.row[pos2d[:, 0]], learned.col[pos2d[:, 1]]], -1))
    sin2d = make_positional(ModelConfig(block_size=bs, embedding_dim=C, pos_encoding="sinusoidal_2d"))
    half = C // 2

    def sinusoid(p):  # "Attention Is All You Need", width half
        i = torch.arange(half // 2)
        angles = p[:, None].float() / 10000 ** (2 * i / half)
        return torch.stack([angles.sin(), angles.cos()], -1).flatten(-2)

    torch.testing.assert_close(sin2d(pos2d), torch.cat([sinusoid(pos2d[:, 0]), sinusoid(pos2d[:, 1])], -1))
    assert sin2d.token_scale == pytest.approx(C ** 0.5)
    rnd = make_positional(ModelConfig(block_size=bs, embedding_dim=C, pos_encoding="randomized"))
    both = torch.tensor([[0, 4], [3, 2], [7, -1]])
    expected = rnd.start[both[:, 0]] + torch.stack([rnd.end[4], rnd.end[2], torch.zeros(C)])
    torch.testing.assert_close(rnd(both), expected)
    assert rnd.consecutive(2, 3).tolist() == [[2, -1], [3, -1], [4, -1]]  # the default: no end channel
    # a model with randomized positions: the default is consecutive from the start, and the end channel counts
    model = build("encoder", "randomized", "standard", "pre")
    src = torch.randint(3, VOCAB, (1, 5), generator=gen(0))
    start = torch.arange(5)
    close(model(src)[0], model(src, pos=torch.stack([start, torch.full((5,), -1)], -1))[0])
    assert not torch.allclose(model(src)[0], model(src, pos=torch.stack([start, start.flip(0)], -1))[0])
    # 2D encodings need positions, in range and of the right layout
    grid_model = build("encoder", "learned_2d", "standard", "pre")
    with pytest.raises(ValueError, match="needs \\(row, column\\) positions"):
        grid_model(src)
    with pytest.raises(ValueError, match="0..23"):
        grid_model(src, pos=torch.tensor([[0, 0], [0, 1], [0, 24], [1, 0], [1, 1]]))
    with pytest.raises(ValueError, match="\\(T, 2\\) or \\(B, T, 2\\)"):
        grid_model(src, pos=start)
    with pytest.raises(ValueError, match="from the start must be >= 0"):
        model(src, pos=torch.stack([start - 1, start], -1))


# ----------------------------------------------------------------------------- 1. causality, bidirectionality

SDPA = pytest.mark.parametrize("sdpa", [True, False], ids=["sdpa", "explicit"])


@SDPA
@pytest.mark.parametrize("pos,attn,norm", VARIANTS_1D)
def test_gpt_is_causal(pos, attn, norm, sdpa):
    model = build("gpt", pos, attn, norm, block_size=16)
    set_sdpa(model, sdpa)
    g = gen(1)
    idx = torch.randint(3, VOCAB, (2, 16), generator=g)
    logits, _ = model(idx)
    for t in (0, 6, 14):
        changed = idx.clone()
        changed[:, t + 1:] = change(changed[:, t + 1:], g)
        logits2, _ = model(changed)
        assert torch.equal(logits[:, : t + 1], logits2[:, : t + 1]), t
        assert not torch.allclose(logits[:, t + 1:], logits2[:, t + 1:]), t


@SDPA
@pytest.mark.parametrize("pos,attn,norm,mode", CASES)
def test_decoder_is_causal(pos, attn, norm, mode, sdpa):
    model = build("seq2seq", pos, attn, norm)
    set_sdpa(model, sdpa)
    pairs = grid_pairs(((3, 3), (3, 3)))
    src, _, tgt_in, _ = collate(pairs)  # no padding: 11 source tokens, 12 decoder inputs each
    src_pos, tgt_pos = layout(pos, mode, pairs)
    memory = model.encode(src, None, src_pos)
    logits, _ = model.decode(tgt_in, memory, pos=upto(tgt_pos, tgt_in.size(1)))
    g = gen(2)
    for t in (0, 5, 10):
        changed = tgt_in.clone()
        changed[:, t + 1:] = change(changed[:, t + 1:], g)
        logits2, _ = model.decode(changed, memory, pos=upto(tgt_pos, tgt_in.size(1)))
        assert torch.equal(logits[:, : t + 1], logits2[:, : t + 1]), t
        assert not torch.allclose(logits[:, t + 1:], logits2[:, t + 1:]), t


@SDPA
@pytest.mark.parametrize("kind", ["encoder", "seq2seq"])
@pytest.mark.parametrize("pos,attn,norm,mode", CASES)
def test_encoder_is_bidirectional(kind, pos, attn, norm, mode, sdpa):
    model = build(kind, pos, attn, norm)
    set_sdpa(model, sdpa)
    pairs = grid_pairs(((3, 3), (3, 3)))
    src = collate(pairs)[0]
    src_pos, _ = layout(pos, mode, pairs)
    encode = (lambda s: model(s, pos=src_pos)[0]) if kind == "encoder" else (lambda s: model.encode(s, None, src_pos))
    states = encode(src)
    changed = src.clone()
    changed[:, -1] = change(changed[:, -1], gen(3))
    states2 = encode(changed)
    assert states.shape == (2, 11, 16)
    for t in (0, 5):  # a later token changes every earlier state
        assert not torch.allclose(states[:, t], states2[:, t]), t


# ----------------------------------------------------------------------------- 2. cached == uncached decoding

@pytest.mark.parametrize("pos,attn,norm", VARIANTS_1D)
def test_gpt_generate_cached_equals_uncached(pos, attn, norm):
    """Greedy and sampled, within block_size (prompt 1 + 12 new) and past it (prompt 5 + 20 new)."""
    model = build("gpt", pos, attn, norm, block_size=16)
    for prompt_len, new in ((1, 12), (5, 20)):
        prompt = torch.randint(3, VOCAB, (2, prompt_len), generator=gen(prompt_len))
        for temperature in (0.0, 1.0):
            runs = []
            for use_cache in (True, False):
                g = gen(123)
                runs.append(torch.cat(list(generate(model, prompt, new, temperature=temperature, generator=g,
                                                    use_cache=use_cache)), dim=1))
            assert runs[0].shape == (2, new)
            assert torch.equal(runs[0], runs[1]), (prompt_len, temperature)


@pytest.mark.parametrize("pos,attn,norm", VARIANTS_1D)
def test_gpt_step_by_step_cached_logits_equal_full_forward(pos, attn, norm):
    model = build("gpt", pos, attn, norm, block_size=16)
    idx = torch.randint(3, VOCAB, (2, 16), generator=gen(4))
    full, _ = model(idx)
    cache = model.new_cache()
    prefill, _ = model(idx[:, :3], cache=cache)  # a prompt, then one token at a time
    steps = [prefill] + [model(idx[:, t : t + 1], cache=cache)[0] for t in range(3, 16)]
    close(torch.cat(steps, dim=1), full)


@pytest.mark.parametrize("pos,attn,norm,mode", CASES)
def test_seq2seq_decoding_cached_equals_uncached(pos, attn, norm, mode):
    model = build("seq2seq", pos, attn, norm)
    pairs = grid_pairs()
    src, src_mask, tgt_in, _ = collate(pairs)
    src_pos, tgt_pos = layout(pos, mode, pairs)
    kw = dict(src_pos=src_pos, tgt_pos=tgt_pos)
    for decode in (lambda **k: greedy_decode(model, src, src_mask, 12, BOS, EOS, PAD, **kw, **k),
                   lambda **k: beam_search(model, src, src_mask, 12, BOS, EOS, PAD, beam=3, **kw, **k)):
        cached, uncached = decode(use_cache=True), decode(use_cache=False)
        assert cached.size(0) == 3 and 1 <= cached.size(1) <= 12
        assert torch.equal(cached, uncached)
    # the logits of a step-by-step cached decode equal those of one full decode
    memory = model.encode(src, src_mask, src_pos)
    T = tgt_in.size(1)
    full, _ = model.decode(tgt_in, memory, src_mask, pos=upto(tgt_pos, T))
    cache = model.new_cache()
    steps = [model.decode(tgt_in[:, t : t + 1], memory, src_mask, cache=cache,
                          pos=None if tgt_pos is None else tgt_pos[:, t : t + 1])[0] for t in range(T)]
    close(torch.cat(steps, dim=1), full)


# ----------------------------------------------------------------------------- 3. SDPA == explicit path

@pytest.mark.parametrize("pos,attn,norm", VARIANTS_1D)
def test_gpt_sdpa_equals_explicit_path(pos, attn, norm):
    model = build("gpt", pos, attn, norm, block_size=16)
    idx = torch.randint(3, VOCAB, (3, 16), generator=gen(5))
    fast = model(idx)[0]
    set_sdpa(model, False)
    close(fast, model(idx)[0])
    close(fast, model(idx, return_weights=True)[0])


@pytest.mark.parametrize("kind", ["encoder", "seq2seq"])
@pytest.mark.parametrize("pos,attn,norm,mode", CASES)
def test_sdpa_equals_explicit_path_with_padding(kind, pos, attn, norm, mode):
    model = build(kind, pos, attn, norm)
    pairs = grid_pairs()
    src, src_mask, tgt_in, _ = collate(pairs)
    tgt_mask = tgt_in != PAD
    assert not src_mask.all() and not tgt_mask.all()
    src_pos, tgt_pos = layout(pos, mode, pairs)

    def run():
        if kind == "encoder":
            return model(src, src_mask, pos=src_pos)[0]
        return model(src, tgt_in, src_mask, tgt_mask, src_pos=src_pos, tgt_pos=upto(tgt_pos, tgt_in.size(1)))[0]

    fast = run()
    set_sdpa(model, False)
    slow = run()
    assert torch.isfinite(fast).all()
    close(fast, slow)


# ----------------------------------------------------------------------------- 4. padding

@pytest.mark.parametrize("kind", ["encoder", "seq2seq"])
@pytest.mark.parametrize("pos,attn,norm,mode", CASES)
def test_padding_never_changes_real_positions(kind, pos, attn, norm, mode):
    """Row 0 (a 1x2 grid) padded to the length of row 1 (3x3) gives what it gives alone."""
    model = build(kind, pos, attn, norm)
    pairs = grid_pairs(((1, 2), (3, 3)))
    alone, both = collate(pairs[:1]), list(collate(pairs))
    pos_alone, pos_both = layout(pos, mode, pairs[:1]), layout(pos, mode, pairs)
    s, n = alone[0].size(1), alone[2].size(1)
    assert both[0].size(1) > s and both[2].size(1) > n

    def run(batch, pos_, tgt_mask):
        src, src_mask, tgt_in, _ = batch
        if kind == "encoder":
            return model(src, src_mask, pos=pos_[0])[0][:, :s]
        return model(src, tgt_in, src_mask, tgt_mask, src_pos=pos_[0], tgt_pos=upto(pos_[1], tgt_in.size(1)))[0][:, :n]

    tgt_mask = both[2] != PAD
    batched = run(both, pos_both, tgt_mask)
    close(batched[:1], run(alone, pos_alone, alone[2] != PAD))
    # whatever sits in the padded slots is invisible
    junk = list(both)
    junk[0] = both[0].masked_fill(~both[1], 9)
    junk[2] = both[2].masked_fill(~tgt_mask, 7)
    torch.testing.assert_close(run(junk, pos_both, tgt_mask)[:1], batched[:1], atol=0, rtol=0)


# ----------------------------------------------------------------------------- 5. learning needs attention, positions

# Each kind trains on a task no model can learn without attending to particular positions (fresh random batches
# of distinct symbols, a fixed held-out batch), until the held-out loss is below LEARNED[kind]:
#   gpt      the token two places back (x_{t-2} at t >= 2)
#   encoder  a tagger: each token's left neighbour (x_{i-1}); for 2D encodings, in a grid 3 wide, the cell
#            above ((r-1, c): row and column both matter)
#   seq2seq  output 0: the source's first token (cross-attention to a source position); outputs 3..6: the
#            decoder input two places back (causal self-attention over target positions); 2D encodings: each
#            sequence one row (the encoder's task has the rows)
# randomized: the encoder's positions are lm.data.layout's evaluation ones (evenly spread), the decoder its default.
# Without positions a 1-block model sees each token and the multiset of what it attends to, never their order;
# its best is FLOORS[kind] (the answer uniform over the candidates a multiset leaves), more than 0.5 above
# LEARNED[kind]. pos_encoding none is held to that: it cannot go below its floor (with positions leaking into it,
# every none case does within NONE_STEPS). Attention that ignores the keys (uniform weights) averages what it may
# attend to: none is then unchanged (a multiset is all it has), and every other variant ends above LEARNED
# (measured, 3 seeds, after LEARN_STEPS: gpt >= 1.36, encoder >= 1.83, seq2seq >= 1.11); with positions dropped
# (no vectors added, no rotation) they end above their floors (gpt >= 1.54, encoder >= 2.05, seq2seq >= 1.52).
# The settings are the test's: 1 block, 64 wide, 4 heads, QK-norm, an untied head and the default optimizer (Muon
# on the blocks' matrices) let every variant learn these in 5-27 steps (4 seeds); LEARN_STEPS leaves twice that.
# At GPT-2's init (std 0.02), 16 wide with a tied head and AdamW, attention logits stay near zero and the
# residual's own token wins the tied head for hundreds of steps.
LEARN = dict(num_blocks=1, num_heads=4, embedding_dim=64, qk_norm=True, tie_head=False)
LEARN_LR, MUON_LR, LEARN_BATCH, LEARN_STEPS, NONE_STEPS = 3e-3, 0.05, 32, 60, 20
LEARNED = {"gpt": 0.7, "encoder": 1.2, "seq2seq": 0.7}
GPT_LEN, ENC_LEN, SRC_LEN, DEC_LEN, BACK = 8, 8, 4, 7, 2
FLOORS = {
    "gpt": sum(math.log(t) for t in range(BACK, GPT_LEN)) / (GPT_LEN - BACK),  # x_{t-2}: one of t prefix tokens
    "encoder": math.log(ENC_LEN - 1),  # the neighbour: one of the other 7 tokens
    # the first source token: one of 4; decoder input j - 2 at j = 3..6: one of the j - 1 before j
    "seq2seq": (math.log(SRC_LEN) + sum(math.log(j - 1) for j in range(3, DEC_LEN))) / (1 + DEC_LEN - 3),
}
TRAIN_CASES = [(kind, *v) for kind in KINDS for v in (VARIANTS_1D if kind == "gpt" else VARIANTS)]


def distinct(g, n, length):
    """n rows of `length` distinct symbols (ids 3..VOCAB-1): the first of a random permutation of each row."""
    return torch.rand(n, VOCAB - 3, generator=g).argsort(dim=-1)[:, :length] + 3


def one_row(length):
    """(row, column) positions of `length` cells in one row."""
    return torch.stack([torch.zeros(length, dtype=torch.long), torch.arange(length)], dim=-1)


def learning_task(kind, pos, g, n):
    """The loss of n fresh examples of the kind's task: a function of (model, head)."""
    if kind == "gpt":  # GPT always uses its default positions
        x = distinct(g, n, GPT_LEN)
        return lambda model, head: F.cross_entropy(model(x)[0][:, BACK:].flatten(0, 1), x[:, :-BACK].flatten())
    if kind == "encoder":
        x = distinct(g, n, ENC_LEN)
        back, p = 1, None
        if pos in POS_2D:
            j = torch.arange(ENC_LEN)
            back, p = 3, torch.stack([j // 3, j % 3], dim=-1)  # the cell above is 3 tokens back
        elif pos == "randomized":
            p = positions(CopyTask(10), pos, x.tolist(), BLOCK)[0]  # lm.data.layout's (evenly spread) positions
        return lambda model, head: F.cross_entropy(head(model(x, pos=p)[0])[:, back:].flatten(0, 1),
                                                   x[:, :-back].flatten())
    src, later = distinct(g, n, SRC_LEN), distinct(g, n, DEC_LEN - 1)
    tgt_in = torch.cat([torch.full((n, 1), BOS), later], dim=1)
    targets = torch.full((n, DEC_LEN), -100)  # -100: not scored
    targets[:, 0] = src[:, 0]
    targets[:, 3:] = tgt_in[:, 1:DEC_LEN - BACK]
    src_pos = tgt_pos = None  # randomized: the decoder its default (consecutive) positions
    if pos in POS_2D:
        src_pos, tgt_pos = one_row(SRC_LEN), one_row(DEC_LEN)
    elif pos == "randomized":
        src_pos = positions(CopyTask(10), pos, src.tolist(), BLOCK)[0]
    return lambda model, head: token_loss(model(src, tgt_in, src_pos=src_pos, tgt_pos=tgt_pos)[0], targets)


@pytest.mark.parametrize("kind,pos,attn,norm", TRAIN_CASES)
def test_training_learns_a_task_that_needs_attention_and_positions(kind, pos, attn, norm):
    """Below LEARNED (more than 0.5 under the floor of a model that cannot tell positions apart) within LEARN_STEPS;
    pos_encoding none trains NONE_STEPS and stays above its floor."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, block_size=BLOCK, pos_encoding=pos, attention=attn, norm_placement=norm,
                      **LEARN)
    model = KINDS[kind](cfg)
    head = nn.Linear(cfg.embedding_dim, VOCAB) if kind == "encoder" else None  # the tagger's
    params = list(model.parameters()) + (list(head.parameters()) if head else [])
    # the default optimizer (train.optimizer muon): Muon on the blocks' matrices, AdamW on the rest
    matrices = muon_parameters(model)
    rest = [p for p in params if all(p is not m for m in matrices)]
    opt = Optimizers({"adamw": torch.optim.AdamW(rest, lr=LEARN_LR, foreach=True),
                      "muon": Muon(matrices, lr=MUON_LR, weight_decay=0.0)})
    held_out, g = learning_task(kind, pos, gen(1000), 64), gen(0)
    with torch.no_grad():
        before = held_out(model.eval(), head).item()
    steps = NONE_STEPS if pos == "none" else LEARN_STEPS
    model.train()
    for step in range(1, steps + 1):
        opt.zero_grad()
        loss = learning_task(kind, pos, g, LEARN_BATCH)(model, head)  # a batch not seen before
        loss.backward()
        opt.step()
        if loss.item() < LEARNED[kind] or step == steps:  # then the held-out batch decides
            with torch.no_grad():
                after = held_out(model.eval(), head).item()
            if after < LEARNED[kind]:
                break
            model.train()
    floor = FLOORS[kind]
    assert floor > LEARNED[kind] + 0.5
    if pos == "none":  # the held-out batch's loss may fall below the expected floor by chance: 0.15 of slack
        assert floor - 0.15 < after < before, (before, after, floor)
    else:
        assert after < LEARNED[kind], (before, after, step)


# ----------------------------------------------------------------------------- 6. RoPE is relative

def rope_score(enc, q, k, m, n):
    """<R(m) q, R(n) k> for one head: q, k (d,); m, n positions (ints or (row, col) pairs)."""
    rq = enc.rotation(torch.tensor([m]))(q[None, None, None])  # (1, 1, 1, d)
    rk = enc.rotation(torch.tensor([n]))(k[None, None, None])
    return (rq * rk).sum().item()


def test_rope_score_depends_only_on_the_offset():
    enc = make_positional(ModelConfig(block_size=64, embedding_dim=16, num_heads=2, pos_encoding="rope"))
    assert isinstance(enc, RotaryPositional) and enc(torch.arange(4)) is None  # nothing added
    g = gen(6)
    for _ in range(5):
        q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)
        rq = enc.rotation(torch.tensor([7]))(q[None, None, None])
        assert rq.norm().item() == pytest.approx(q.norm().item(), rel=1e-5)  # a rotation
        for m, n in ((0, 0), (3, 1), (2, 9), (10, 4)):
            base = rope_score(enc, q, k, m, n)
            for s in (1, 5, 13, 40):
                assert rope_score(enc, q, k, m + s, n + s) == pytest.approx(base, abs=1e-4), (m, n, s)
        scores = [rope_score(enc, q, k, 10, 10 - off) for off in range(-3, 4)]
        assert all(abs(a - b) > 1e-4 for a, b in itertools.combinations(scores, 2)), scores


def test_rope_2d_score_depends_only_on_the_row_and_column_offset():
    enc = make_positional(ModelConfig(block_size=64, embedding_dim=16, num_heads=2, pos_encoding="rope_2d"))  # head width 8: 2 pairs turn with the row, 2 with the column
    assert isinstance(enc, Rotary2DPositional) and enc(torch.zeros(3, 2, dtype=torch.long)) is None
    g = gen(7)
    for _ in range(5):
        q, k = torch.randn(8, generator=g), torch.randn(8, generator=g)
        for m, n in (((0, 0), (0, 0)), ((2, 3), (1, 5)), ((4, 0), (0, 4))):
            base = rope_score(enc, q, k, m, n)
            for dr, dc in ((1, 0), (0, 1), (3, 7), (11, 2)):
                shifted = rope_score(enc, q, k, (m[0] + dr, m[1] + dc), (n[0] + dr, n[1] + dc))
                assert shifted == pytest.approx(base, abs=1e-4), (m, n, dr, dc)
        m, n = (5, 5), (3, 2)
        base = rope_score(enc, q, k, m, n)
        assert abs(rope_score(enc, q, k, m, (3, 3)) - base) > 1e-4  # only the column offset changed
        assert abs(rope_score(enc, q, k, m, (4, 2)) - base) > 1e-4  # only the row offset changed
        assert abs(rope_score(enc, q, k, (5, 5), (3, 4)) - rope_score(enc, q, k, (5, 5), (4, 3))) > 1e-4


@pytest.mark.parametrize("attn", ATTENTIONS)
def test_whole_models_with_rope_are_shift_invariant(attn):
    """Shifting every position by a constant changes nothing with rope (relative), and does with learned."""
    src = torch.randint(3, VOCAB, (2, 9), generator=gen(8))
    tgt = torch.randint(3, VOCAB, (2, 7), generator=gen(9))
    base, shifted = torch.arange(9), torch.arange(9) + 5
    for norm in NORMS:
        enc = build("encoder", "rope", attn, norm)
        states = enc(src)[0]
        close(enc(src, pos=shifted)[0], states)
        close(enc(src, pos=torch.stack([base + 2, base + 11]))[0], states)  # a different shift per row
        s2s = build("seq2seq", "rope", attn, norm)
        memory = s2s.encode(src)
        close(s2s.encode(src, None, shifted), memory)
        logits = s2s.decode(tgt, memory)[0]
        close(s2s.decode(tgt, memory, pos=torch.arange(7) + 3)[0], logits)  # cross-attention is not rotated
        gpt = build("gpt", "rope", attn, norm)
        close(gpt(src, pos=shifted)[0], gpt(src)[0])
        learned = build("encoder", "learned", attn, norm)
        assert not torch.allclose(learned(src, pos=shifted)[0], learned(src)[0])


@pytest.mark.parametrize("attn", ATTENTIONS)
def test_whole_models_with_rope_2d_are_shift_invariant(attn):
    pairs = grid_pairs(((3, 3), (2, 4)))
    src, src_mask, tgt_in, _ = collate(pairs)
    src_pos, tgt_pos = positions(GRID, "rope_2d", [s for s, _ in pairs], BLOCK)
    tgt_pos = tgt_pos[:, : tgt_in.size(1)]
    offset = torch.tensor([4, 2])
    model = build("seq2seq", "rope_2d", attn, "pre")
    memory = model.encode(src, src_mask, src_pos)
    real = src_mask[..., None]
    close(model.encode(src, src_mask, src_pos + offset) * real, memory * real)
    logits = model.decode(tgt_in, memory, src_mask, pos=tgt_pos)[0]
    close(model.decode(tgt_in, memory, src_mask, pos=tgt_pos + offset)[0], logits)
    # the column matters: transposing the positions changes the states
    assert not torch.allclose(model.encode(src, src_mask, src_pos.flip(-1)), memory)


# ----------------------------------------------------------------------------- 7. config errors

def config_error(*overrides):
    with pytest.raises(ConfigError) as e:
        config.load(None, list(overrides))
    return str(e.value)


@pytest.mark.parametrize("key,bad,valid", [
    ("pos_encoding", "alibi", config.POS_ENCODINGS),
    ("attention", "linear", config.ATTENTIONS),
    ("norm_placement", "sandwich", config.NORM_PLACEMENTS),
    ("grid_op", "spin", config.GRID_OPS),
])
def test_unknown_names_are_refused_listing_the_valid_ones(key, bad, valid):
    msg = config_error(f"--{key}={bad}")
    assert msg.startswith(f"{key}: {bad!r} is not allowed"), msg
    assert ", ".join(valid) in msg, msg


@pytest.mark.parametrize("maker,name,valid", [
    (lambda n: make_positional(ModelConfig(embedding_dim=16, num_heads=2, pos_encoding=n)), "pos_encoding", POSITIONAL),
    (lambda n: make_attention(ModelConfig(embedding_dim=16, num_heads=2, attention=n)), "attention", ATTENTION),
    (lambda n: Block(ModelConfig(embedding_dim=16, num_heads=2, norm=n)), "norm", NORM_LAYERS),
    (lambda n: Block(ModelConfig(embedding_dim=16, num_heads=2, activation=n)), "activation", ACTIVATIONS),
    (lambda n: Block(ModelConfig(embedding_dim=16, num_heads=2, norm_placement=n)), "norm_placement", NORM_PLACEMENTS),
    (lambda n: GPT(ModelConfig(embedding_dim=16, num_heads=2, vocab_size=5, norm_placement=n)), "norm_placement",
     NORM_PLACEMENTS),
])
def test_builders_refuse_unknown_names(maker, name, valid):
    with pytest.raises(ValueError, match=f"unknown {name} 'nope'; choose one of: {', '.join(valid)}"):
        maker("nope")


@pytest.mark.parametrize("pos", POS_2D)
@pytest.mark.parametrize("task", ["lm", "copy"])
def test_2d_encodings_need_the_grid_task(pos, task):
    msg = config_error(f"--task={task}", f"--pos_encoding={pos}")
    assert msg.startswith(f"pos_encoding: {pos!r} is not allowed"), msg
    assert f"task {task!r} has no grid" in msg and "task: grid" in msg, msg
    config.load(None, ["--task=grid", f"--pos_encoding={pos}"])  # fine there


def test_variant_constraints():
    msg = config_error("--task=lm", "--pos_encoding=randomized")
    assert msg.startswith("pos_encoding: 'randomized' is not allowed") and "task lm" in msg, msg
    config.load(None, ["--task=copy", "--pos_encoding=randomized"])
    msg = config_error("--attention=differential", "--num_heads=3", "--embedding_dim=48")
    assert msg.startswith("num_heads: 3 is not allowed") and "even" in msg, msg
    config.load(None, ["--attention=standard", "--num_heads=3", "--embedding_dim=48"])
    msg = config_error("--task=grid", "--pos_encoding=rope_2d", "--num_heads=4", "--embedding_dim=24")  # width 6
    assert msg.startswith("pos_encoding: 'rope_2d' is not allowed") and "divisible by 4" in msg and "= 6" in msg, msg
    config.load(None, ["--task=grid", "--pos_encoding=rope", "--num_heads=4", "--embedding_dim=24"])
    config.load(None, ["--task=grid", "--pos_encoding=rope_2d", "--num_heads=2", "--embedding_dim=16"])


@pytest.mark.parametrize("task", ["copy", "reverse", "add", "grid"])
def test_no_positions_is_refused_where_the_answer_depends_on_the_order(task):
    msg = config_error(f"--task={task}", "--pos_encoding=none", "--num_symbols=10", "--min_len=2", "--max_len=4",
                       "--eval_long_len=4")
    assert msg.startswith("pos_encoding: 'none' is not allowed") and "unordered bag" in msg, msg
    for fine in ("lm", "sort"):
        config.load(None, [f"--task={fine}", "--pos_encoding=none"])


# ----------------------------------------------------------------------------- 8. checkpoints through the CLIs

GRID_ARGS = ["--task=grid", "--grid_op=rotate", "--min_len=2", "--max_len=3", "--eval_long_len=3",
             "--held_out_size=20"]
RUNS = {  # name: (train.py arguments, sample.py arguments)
    "lm-rope-differential-post": (["--pos_encoding=rope", "--attention=differential", "--norm_placement=post"],
                                  None),  # the prompt comes from the corpus
    "copy-randomized": (["--task=copy", "--min_len=1", "--max_len=4", "--eval_long_len=6", "--held_out_size=20",
                         "--pos_encoding=randomized"], ["--input", "1 2 3"]),
    "grid-learned_2d": (GRID_ARGS + ["--pos_encoding=learned_2d"], ["--input", "12/34"]),
    "grid-sinusoidal_2d-differential": (GRID_ARGS + ["--pos_encoding=sinusoidal_2d", "--attention=differential"],
                                        ["--input", "102/034"]),
    "grid-rope_2d-post": (GRID_ARGS + ["--pos_encoding=rope_2d", "--norm_placement=post"], ["--input", "12/34/56"]),
}
SAMPLED_BY_SUBPROCESS = ("lm-rope-differential-post", "copy-randomized", "grid-rope_2d-post")  # the others in-process


def expected_model_fields(name):
    args = dict(a[2:].split("=", 1) for a in RUNS[name][0])
    return {"pos_encoding": args["pos_encoding"], "attention": args.get("attention", "standard"),
            "norm_placement": args.get("norm_placement", "pre")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of RUNS trained with train.py, all at once (one thread each), then sample.py on some."""
    root = tmp_path_factory.mktemp("variants")
    corpus = root / "small.txt"
    corpus.write_text(offline_text()[:20_000], encoding="utf-8")  # as conftest's small_corpus
    prompt = corpus.read_text(encoding="utf-8")[:6]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {name: popen("train.py", *tiny(corpus, root / name, *train_args, "--max_iters=10", "--eval_interval=5"),
                         env=env)
             for name, (train_args, _) in RUNS.items()}
    trained = {}
    for name, p in procs.items():
        _, err = p.communicate(timeout=TIMEOUT)
        trained[name] = (p.returncode, err)
    samples = {}
    for name in SAMPLED_BY_SUBPROCESS:
        if trained[name][0] == 0:
            args = RUNS[name][1] or ["--prompt", prompt, "--max_new_tokens", 20, "--temperature", 0]
            samples[name] = popen("sample.py", "--checkpoint", root / name / "best.pt", "--device=cpu", *args,
                                  env=env)
    sampled = {}
    for name, p in samples.items():
        out, err = p.communicate(timeout=TIMEOUT)
        sampled[name] = (p.returncode, out, err)
    return {"root": root, "prompt": prompt, "trained": trained, "sampled": sampled}


def run_model_config(name, ckpt):
    """The ModelConfig of the arguments this test gave train.py (tiny() and RUNS), ModelConfig's defaults for the
    rest (train.py without --config), and the vocabulary size of the saved token embedding: the reference a loaded
    model is held to, built without the checkpoint's config or lm.checkpoint."""
    args = dict(a[2:].split("=", 1) for a in tiny("corpus", "out", *RUNS[name][0]))
    vocab_size = next(t.size(0) for k, t in ckpt["model"].items() if k.endswith("tok.weight"))
    return ModelConfig(vocab_size=vocab_size, block_size=int(args["block_size"]), num_blocks=int(args["num_blocks"]),
                       num_heads=int(args["num_heads"]), embedding_dim=int(args["embedding_dim"]),
                       **expected_model_fields(name))


def grid_cells(h, w):
    """(row, col) of the h * (w + 1) tokens of an h x w grid whose every row is ended by a separator at col w."""
    return [[r, c] for r in range(h) for c in range(w + 1)]


# sample.py's input of each seq2seq run, by hand: its token ids (symbol + 3; the grid's separator, symbol 10, is
# id 13), and the (source, decoder) positions evaluation gives it with block_size 16
HAND_INPUTS = {
    # copy, 3 symbols: 4 slots spread over 0..15, round(j * 15 / 3) = 0, 5, 10, 15; source token j is also
    # position 2 - j counted from the end; the decoder has no end channel
    "copy-randomized": ([4, 5, 6], [[0, 10], [5, 5], [10, 0]], [[0, -1], [5, -1], [10, -1], [15, -1]]),
    # rotate: an h x w grid gives a w x h one
    "grid-learned_2d": ([4, 5, 13, 6, 7], grid_cells(2, 2)[:-1], grid_cells(2, 2)),  # 12/34
    "grid-sinusoidal_2d-differential": ([4, 3, 5, 13, 3, 6, 7], grid_cells(2, 3)[:-1], grid_cells(3, 2)),  # 102/034
    "grid-rope_2d-post": ([4, 5, 13, 6, 7, 13, 8, 9], grid_cells(3, 2)[:-1], grid_cells(2, 3)),  # 12/34/56
}


def inputs_for(vocab, cfg, name, prompt):
    """A fixed input: GPT (idx,); seq2seq (src, mask, src_pos, tgt_pos) with HAND_INPUTS' positions."""
    if cfg.data.task == "lm":
        return (torch.tensor(vocab.encode(prompt), dtype=torch.long)[None],)
    ids, src_pos, tgt_pos = HAND_INPUTS[name]
    assert vocab.to_ids(vocab.parse(RUNS[name][1][1])) == ids
    src = torch.tensor([ids])
    return src, torch.ones_like(src, dtype=torch.bool), torch.tensor([src_pos]), torch.tensor([tgt_pos])


def logits_of(model, vocab, cfg, inp):
    if cfg.data.task == "lm":
        return model(inp[0])[0]
    src, mask, src_pos, tgt_pos = inp
    tgt_in = torch.tensor([[BOS] + [3 + j % vocab.num_symbols for j in range(tgt_pos.size(1) - 1)]])
    return model(src, tgt_in, mask, src_pos=src_pos, tgt_pos=tgt_pos)[0]


@torch.no_grad()
def plain_greedy_continuation(model, ids, new, block_size):
    """Greedy decoding written out for a GPT: at every step the whole window of the last block_size tokens through
    the model (positions 0..block_size-1, no cache, no lm.generate), the last position's argmax appended."""
    ids = list(ids)
    for _ in range(new):
        ids.append(int(model(torch.tensor([ids[-block_size:]]))[0][0, -1].argmax()))
    return ids[-new:]


@torch.no_grad()
def plain_greedy_decode(model, src, src_pos, tgt_pos):
    """The same for an encoder-decoder: the whole decoder input so far through the whole model at every step, the
    argmax appended, until EOS or a token for every decoder position."""
    ys = [BOS]
    while len(ys) <= tgt_pos.size(1) and ys[-1] != EOS:
        logits = model(src, torch.tensor([ys]), src_pos=src_pos, tgt_pos=tgt_pos[:, :len(ys)])[0]
        ys.append(int(logits[0, -1].argmax()))
    return ys[1:]


def printed(task_name, ids):
    """Output ids as text: the symbols before EOS; a grid's rows of digits joined by '/', others spaced."""
    symbols = []
    for i in ids:
        if i == EOS:
            break
        if i >= 3:
            symbols.append(i - 3)
    if task_name == "grid":
        return "".join("/" if s == 10 else str(s) for s in symbols)
    return " ".join(map(str, symbols))


@pytest.mark.parametrize("name", list(RUNS))
@pytest.mark.slow
def test_checkpoints_of_every_variant_round_trip_and_sample(runs, name, capsys):
    """load_model gives the tensors saved, in the modules of the variant the run asked for, computing what a model
    built here from train.py's arguments computes; sample.py prints what a plain greedy decode of it gives."""
    rc, stderr = runs["trained"][name]
    assert rc == 0, stderr
    best = runs["root"] / name / "best.pt"
    assert best.is_file()
    ckpt = load_checkpoint(best)
    model, vocab, cfg = load_model(best)
    fields = expected_model_fields(name)
    for key, value in fields.items():
        assert getattr(cfg.model, key) == value == ckpt["config"]["model"][key], key
    if cfg.data.task == "grid":
        assert cfg.data.grid_op == "rotate" and vocab.op == "rotate"
    # the weights are those saved
    state = model.state_dict()
    assert state.keys() == ckpt["model"].keys()
    assert all(torch.equal(state[k], ckpt["model"][k]) for k in state)
    # in the modules the variant names (a wrong pos_encoding or norm_placement loads the same tensors)
    embed = model.embed if cfg.data.task == "lm" else model.encoder.embed
    assert type(embed.pos) is POSITIONAL[fields["pos_encoding"]]
    attns = [m for m in model.modules() if hasattr(m, "use_sdpa")]
    assert attns and all(type(m) is ATTENTION[fields["attention"]] for m in attns)
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert blocks and all(b.post_norm == (fields["norm_placement"] == "post") for b in blocks)
    # computing what the model the run's arguments describe computes with those tensors
    reference = (GPT if cfg.data.task == "lm" else EncoderDecoder)(run_model_config(name, ckpt))
    reference.load_state_dict(ckpt["model"])
    reference.eval()
    inp = inputs_for(vocab, cfg, name, runs["prompt"])
    logits = logits_of(model, vocab, cfg, inp)
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, logits_of(reference, vocab, cfg, inp))

    # sample.py: exits 0 and prints one line, the plain greedy decode of the reference model
    if name in runs["sampled"]:
        code, stdout, err = runs["sampled"][name]
    else:
        import sample

        code = sample.main(["--checkpoint", str(best), "--device=cpu", *RUNS[name][1]])
        stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err, err
    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout
    line = stdout[:-1]
    if cfg.data.task == "lm":
        tokens = plain_greedy_continuation(reference, inp[0][0].tolist(), 20, cfg.model.block_size)
        assert line == runs["prompt"] + vocab.decode(tokens)
        return
    src, _, src_pos, tgt_pos = inp
    assert line == printed(cfg.data.task, plain_greedy_decode(reference, src, src_pos, tgt_pos))
    if cfg.data.task == "grid":
        assert re.fullmatch(r"[0-9/]*", line), line
    else:
        assert re.fullmatch(r"[0-9]( [0-9])*|", line), line


@pytest.mark.slow
def test_longer_input_to_a_randomized_model_gets_a_note_not_a_warning(runs, capsys):
    """Trained on lengths 1..4, asked a length-6 input: randomized positions are made for that."""
    import sample

    best = runs["root"] / "copy-randomized" / "best.pt"
    assert sample.main(["--checkpoint", str(best), "--device=cpu", "--input", "1 2 3 4 5 6"]) == 0
    err = capsys.readouterr().err
    assert "note: the input has length 6" in err and "randomized positions" in err and "likely wrong" not in err, err


# ----------------------------------------------------------------------------- 9. lm.data.layout.positions

LAYOUT_TASKS = [CopyTask(10), ReverseTask(10), make_task("add", 10, max_len=4)] + \
               [GridTask(9, op) for op in ("rotate", "transpose", "flip", "gravity")]


def sample_sources(task, n=12, seed=0):
    lo, hi = (1, 3) if task.name == "grid" else (1, 4)
    return [s for s, _ in task.examples(n, lo, hi, gen(seed))]


@pytest.mark.parametrize("task", LAYOUT_TASKS, ids=lambda t: getattr(t, "op", t.name))
def test_layout_randomized_positions(task):
    block = 24
    sources = sample_sources(task)
    symbols = [task.from_ids(s) for s in sources]
    for g in (gen(1), None):
        src_pos, tgt_pos = positions(task, "randomized", sources, block, g)
        S, L = max(map(len, sources)), max(task.target_slots(s) for s in symbols)
        assert src_pos.shape == (len(sources), S, 2) and tgt_pos.shape == (len(sources), L, 2)
        assert src_pos.dtype == tgt_pos.dtype == torch.long
        assert (tgt_pos[..., 1] == -1).all()  # the decoder has no end channel
        for i, src in enumerate(symbols):
            s, n = len(src), task.target_slots(src)
            start, end, dec = src_pos[i, :s, 0], src_pos[i, :s, 1], tgt_pos[i, :n, 0]
            longer = start if s >= n else dec
            assert len(longer) == max(s, n)
            assert (longer.diff() > 0).all() and 0 <= longer.min() and longer.max() <= block - 1  # sorted, distinct
            assert torch.equal(start[: min(s, n)], dec[: min(s, n)])  # one set: token j of each side alike
            assert torch.equal(end, start.flip(0))  # from the end = the positions reversed
            assert (tgt_pos[i, n:, 0] == dec[-1]).all()  # past the last slot: repeated
            if g is None:  # evenly spread over the whole range
                k = max(s, n)
                assert longer[0] == 0 and longer[-1] == block - 1
                expected = [round(j * (block - 1) / (k - 1)) for j in range(k)]
                assert torch.equal(longer, torch.tensor(expected)), (longer, expected)
    again = positions(task, "randomized", sources, block)
    assert all(torch.equal(a, b) for a, b in zip(again, positions(task, "randomized", sources, block)))
    one, two = (positions(task, "randomized", sources, block, gen(seed))[0] for seed in (1, 2))
    assert not torch.equal(one, two)  # random in training
    assert torch.equal(one, positions(task, "randomized", sources, block, gen(1))[0])  # from the generator alone
    assert not torch.equal(one, positions(task, "randomized", sources, block)[0])


def test_layout_randomized_hand_example():
    """Copy of 3 symbols: k = 4 slots, evenly spread over 0..9: 0, 3, 6, 9."""
    src_pos, tgt_pos = positions(CopyTask(10), "randomized", [[3, 4, 5]], 10)
    assert src_pos.tolist() == [[[0, 6], [3, 3], [6, 0]]]
    assert tgt_pos.tolist() == [[[0, -1], [3, -1], [6, -1], [9, -1]]]


def output_shape(op, h, w):
    """rotate and transpose turn an h x w grid into a w x h one; flip and gravity keep its shape."""
    return (w, h) if op in ("rotate", "transpose") else (h, w)


@pytest.mark.parametrize("pos", POS_2D)
@pytest.mark.parametrize("op", ["rotate", "transpose", "flip", "gravity"])
def test_layout_grid_positions_are_the_grid_cells(pos, op):
    """Random grids: source token at the (row, col) of its cell, each row's separator at col W; decoder input j at
    the (row, col) of output token j, in the output's shape; past the last, the last repeated. All computed here
    from the grid's shape (split at the separator), not by the task."""
    task = GridTask(9, op)
    sep = 3 + 9  # the separator's id
    sources = sample_sources(task, n=10, seed=3)
    src_pos, tgt_pos = positions(task, pos, sources, BLOCK, gen(0))
    assert torch.equal(positions(task, pos, sources, BLOCK)[0], src_pos)  # no randomness
    for i, src in enumerate(sources):
        rows = [[]]
        for t in src:
            if t == sep:
                rows.append([])
            else:
                rows[-1].append(t)
        h, w = len(rows), len(rows[0])
        assert all(len(row) == w for row in rows)
        out_h, out_w = output_shape(op, h, w)
        n = out_h * (out_w + 1)  # output cells, separators and EOS
        assert src_pos[i, : len(src)].tolist() == grid_cells(h, w)[:-1]
        assert tgt_pos[i, :n].tolist() == grid_cells(out_h, out_w)
        assert (tgt_pos[i, n:] == tgt_pos[i, n - 1]).all()


GRID_EXAMPLE = [[1, 0, 2], [0, 3, 4]]  # 2 x 3; colour 0 is the background


@pytest.mark.parametrize("pos", POS_2D)
@pytest.mark.parametrize("op", ["rotate", "transpose", "flip", "gravity"])
def test_layout_grid_positions_hand_example(pos, op):
    """GRID_EXAMPLE: its positions written out, and the token each decoder input is trained to predict is the
    output cell at that input's (row, col) by numpy (separators at col W', EOS at the end)."""
    task = GridTask(9, op)
    src = [4, 3, 5, 12, 3, 6, 7]  # 1 0 2 / 0 3 4: colour + 3, the separator (symbol 9) is id 12
    assert task.to_ids(task.flatten(GRID_EXAMPLE)) == src
    src_pos, tgt_pos = positions(task, pos, [src], BLOCK)
    assert src_pos[0].tolist() == [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1], [1, 2]]
    expected = {  # output 3 x 2 (rotate, transpose) or 2 x 3 (flip, gravity), each row ended at col W'
        (3, 2): [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2], [2, 0], [2, 1], [2, 2]],
        (2, 3): [[0, 0], [0, 1], [0, 2], [0, 3], [1, 0], [1, 1], [1, 2], [1, 3]],
    }
    out = grid_reference(op, GRID_EXAMPLE)
    assert tgt_pos[0].tolist() == expected[out.shape]
    out_h, out_w = out.shape
    predicted = task.to_ids(task.flatten(task.transform(GRID_EXAMPLE))) + [EOS]  # decoder input j predicts token j
    assert len(predicted) == len(expected[out.shape])
    for (r, c), token in zip(tgt_pos[0].tolist(), predicted):
        assert token == (3 + out[r, c] if c < out_w else 12 if r < out_h - 1 else EOS), (r, c)


@pytest.mark.parametrize("pos", ["learned", "sinusoidal", "rope", "none"])
def test_layout_consecutive_encodings_give_no_positions(pos):
    for task in (CopyTask(10), GRID):
        assert positions(task, pos, sample_sources(task, n=3), BLOCK) == (None, None)
        assert positions(task, pos, sample_sources(task, n=3), BLOCK, gen(0)) == (None, None)
