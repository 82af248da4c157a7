import pytest
import torch
import torch.nn.functional as F

from lm.config import ModelConfig
from lm.generate import generate
from lm.nn import GPT, Block, EncoderDecoder, MultiHeadAttention, build_mask, make_positional, token_loss

POS = ["learned", "sinusoidal", "none"]


def tiny(pos="learned", dropout=0.0, block_size=16, vocab=11):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=vocab, block_size=block_size, num_blocks=2, num_heads=2, embedding_dim=16,
                           dropout=dropout, pos_encoding=pos)).eval()


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("use_sdpa", [True, False])
def test_causality_future_tokens_never_change_earlier_logits(pos, use_sdpa):
    model = tiny(pos)
    for m in model.modules():
        if isinstance(m, MultiHeadAttention):
            m.use_sdpa = use_sdpa
    idx = torch.randint(11, (2, 16))
    logits, _ = model(idx)
    for t in (0, 5, 14):
        changed = idx.clone()
        changed[:, t + 1:] = (changed[:, t + 1:] + 1 + torch.randint(9, changed[:, t + 1:].shape)) % 11
        logits2, _ = model(changed)
        assert torch.equal(logits[:, : t + 1], logits2[:, : t + 1])
        assert not torch.allclose(logits[:, t + 1:], logits2[:, t + 1:])


@pytest.mark.parametrize("pos", POS)
def test_sdpa_matches_explicit_attention(pos):
    model = tiny(pos)
    idx = torch.randint(11, (3, 16))
    fast, _ = model(idx)
    slow, maps = model(idx, return_weights=True)  # forces the explicit path
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)
    assert list(maps.kinds()) == ["decoder_self"]
    weights = maps.decoder_self
    assert len(weights) == 2 and weights[0].shape == (3, 2, 16, 16)
    torch.testing.assert_close(weights[0].sum(-1), torch.ones(3, 2, 16))
    assert (weights[0].triu(diagonal=1) == 0).all()  # no weight on the future


@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("prompt_len,new", [(1, 15), (5, 30), (20, 10)])
def test_kv_cache_decoding_equals_full_recompute(pos, prompt_len, new):
    """Greedy and sampled tokens are identical with and without the cache, also past block_size."""
    model = tiny(pos)
    prompt = torch.randint(11, (2, prompt_len))
    for temperature in (0.0, 1.0):
        runs = []
        for use_cache in (True, False):
            g = torch.Generator().manual_seed(123)
            runs.append(torch.cat(list(generate(model, prompt, new, temperature=temperature, generator=g,
                                                use_cache=use_cache)), dim=1))
        assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("pos", POS)
def test_cached_logits_match_uncached(pos):
    model = tiny(pos)
    idx = torch.randint(11, (2, 12))
    full, _ = model(idx)
    cache = model.new_cache()
    step_logits = [model(idx[:, :4], cache=cache)[0]]
    for t in range(4, 12):
        step_logits.append(model(idx[:, t:t + 1], cache=cache)[0])
    torch.testing.assert_close(torch.cat(step_logits, dim=1), full, atol=1e-5, rtol=1e-5)


def test_too_long_input_is_refused():
    with pytest.raises(ValueError, match="longer than block_size 16"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_head_is_tied_to_embedding_and_counts_are_reported():
    """The counts of tiny() (V = 11, T = 16, C = 16, 2 blocks), by hand: each block has two LayerNorms
    (weight and bias, 2 x 2C), q and out projections (C x C + C each), k and v (C x 2C + 2C) and a C x 4C,
    4C x C feed-forward with biases; the final LayerNorm 2C; the tied head adds nothing. flops_per_token is
    Kaplan's 6 N + 6 L T C + 6 C V, N the parameters outside the embeddings."""
    model = tiny()
    assert model.head.weight is model.embed.tok.weight
    block = 2 * (16 + 16) + 2 * (16 * 16 + 16) + (16 * 32 + 32) + (16 * 64 + 64) + (64 * 16 + 16)  # 3280
    non_embedding = 2 * block + (16 + 16)  # 6592
    embeddings = 11 * 16 + 16 * 16  # tokens and learned positions: 432
    assert model.num_params() == non_embedding + embeddings == 7024
    assert model.flops_per_token() == 6 * non_embedding + 6 * 2 * 16 * 16 + 6 * 16 * 11
    untied = GPT(ModelConfig(vocab_size=11, block_size=16, num_blocks=2, num_heads=2, embedding_dim=16,
                             tie_head=False))
    assert untied.num_params() == 7024 + 11 * 16  # the head's own V x C matrix


@pytest.mark.parametrize("model_class", [GPT, EncoderDecoder])
def test_flops_per_token_counts_the_output_head(model_class):
    """6 C V per token for the head's forward and backward matmuls, although its weights are tied."""
    def flops(vocab):
        cfg = ModelConfig(vocab_size=vocab, block_size=16, num_blocks=2, num_heads=2, embedding_dim=16)
        return model_class(cfg).flops_per_token()

    assert flops(111) - flops(11) == 6 * 16 * 100
    c, v, t, layers = 16, 11, 16, 2 * (3 if model_class is EncoderDecoder else 1)
    assert flops(11) > 6 * layers * t * c + 6 * c * v


def test_language_model_label_smoothing_is_plain_cross_entropy():
    """Every class is a valid output of a language model: smoothing spreads eps over all V classes."""
    torch.manual_seed(0)
    logits, targets = torch.randn(2, 5, 11), torch.randint(11, (2, 5))
    expected = F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), label_smoothing=0.1)
    assert torch.equal(token_loss(logits, targets, label_smoothing=0.1), expected)
    q = torch.full((10, 11), 0.1 / 11).scatter_add(1, targets.reshape(-1, 1), torch.full((10, 1), 0.9))
    torch.testing.assert_close(expected, -(q * logits.reshape(-1, 11).log_softmax(-1)).sum(-1).mean())


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_a_query_with_no_allowed_key_gives_zero_in_both_attention_paths(use_sdpa):
    """A fully masked row: weights all 0 and head output 0, so the result is out_proj's bias, in both paths."""
    torch.manual_seed(0)
    attn = MultiHeadAttention(ModelConfig(embedding_dim=16, num_heads=2)).eval()
    torch.nn.init.normal_(attn.out_proj.bias)
    attn.use_sdpa = use_sdpa
    x = torch.randn(2, 4, 16, requires_grad=True)
    allowed = torch.ones(4, 4, dtype=torch.bool)
    allowed[1] = False  # query 1 may attend to nothing
    fast, _ = attn(x, attn_mask=allowed)  # SDPA unless use_sdpa is False
    slow, w = attn(x, attn_mask=allowed, return_weights=True)  # always the explicit path
    assert torch.isfinite(fast).all() and torch.isfinite(slow).all() and torch.isfinite(w).all()
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=1e-6)
    assert (w[:, :, 1] == 0).all()
    torch.testing.assert_close(w[:, :, [0, 2, 3]].sum(-1), torch.ones(2, 2, 3))
    torch.testing.assert_close(slow[:, 1], attn.out_proj.bias.expand(2, 16))  # out_proj(0)
    slow.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_unknown_positional_encoding_lists_valid_names():
    with pytest.raises(ValueError, match="learned, sinusoidal, rope, none, randomized, learned_2d, sinusoidal_2d, "
                                         "rope_2d"):
        make_positional(ModelConfig(block_size=8, embedding_dim=16, pos_encoding="alibi"))


def test_block_is_shared_by_encoder_and_decoder_uses():
    """The same Block runs bidirectional, causal, padded and cross-attending."""
    torch.manual_seed(0)
    x, ctx = torch.randn(2, 6, 16), torch.randn(2, 4, 16)
    cfg = ModelConfig(embedding_dim=16, num_heads=2)
    enc = Block(cfg, causal=False).eval()
    y, _, _ = enc(x)
    x2 = x.clone()
    x2[:, -1] = torch.randn(2, 16)
    y2, _, _ = enc(x2)
    assert not torch.allclose(y[:, 0], y2[:, 0])  # bidirectional: a later token changes an earlier state
    dec = Block(cfg, causal=True, cross_attention=True).eval()
    with pytest.raises(ValueError, match="context"):
        dec(x)
    out, _, cross = dec(x, ctx, context_padding_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool),
                        return_weights=True)
    assert out.shape == (2, 6, 16) and cross.shape == (2, 2, 6, 4)
    assert (cross[0, :, :, 2:] == 0).all()  # padded source positions get no attention


def test_key_padding_mask_gives_padding_no_influence():
    torch.manual_seed(0)
    attn = MultiHeadAttention(ModelConfig(embedding_dim=16, num_heads=2)).eval()
    x = torch.randn(1, 5, 16)
    keep = torch.tensor([[True, True, True, False, False]])
    y, _ = attn(x, key_padding_mask=keep)
    x2 = x.clone()
    x2[:, 3:] = torch.randn(1, 2, 16)
    y2, _ = attn(x2, key_padding_mask=keep)
    torch.testing.assert_close(y[:, :3], y2[:, :3])


def test_build_mask_with_cache_offsets():
    m = build_mask(2, 5, causal=True)
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
