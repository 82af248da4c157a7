"""Differential attention (lm.nn.differential) against a slow transcription of the paper's equations.

The reference below shares no code with the module: it slices the module's parameters per head,
loops over the differential heads and uses plain matmuls and torch.softmax.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from lm.config import ConfigError, ModelConfig
from lm.config import load as load_config
from lm.nn.attention import KVCache, MultiHeadAttention
from lm.nn.differential import DifferentialAttention
from lm.nn.position import Rotation

C, NH = 16, 4  # d = 4, h = 2 differential heads
CFG = ModelConfig(embedding_dim=C, num_heads=NH, attention="differential")
D, H = C // NH, NH // 2


def make(causal=False, layer=3, seed=0):
    torch.manual_seed(seed)
    m = DifferentialAttention(CFG, causal=causal, layer=layer).eval()
    with torch.no_grad():  # random values everywhere, so that a wrong slice or a missing term shows
        for p in m.parameters():
            p.copy_(torch.randn_like(p) * 0.4)
        m.subln.weight.copy_(1 + 0.5 * torch.randn(2 * D))
    return m


def reference(m, x, context=None, allowed=None, rope=None, layer=3):
    """allowed: (B, T, T_k) bool, True where query t may see key s (None = everything)."""
    src = x if context is None else context
    wq, bq = m.q_proj.weight, m.q_proj.bias
    wkv, bkv = m.kv_proj.weight, m.kv_proj.bias
    lambda_init = 0.8 - 0.6 * math.exp(-0.3 * (layer - 1))
    lam = (torch.exp((m.lambda_q1 * m.lambda_k1).sum()) - torch.exp((m.lambda_q2 * m.lambda_k2).sum())
           + lambda_init)
    Q = x @ wq.T + bq  # (B, T, C)
    K = src @ wkv[:C].T + bkv[:C]  # (B, S, C)
    V = src @ wkv[C:].T + bkv[C:]  # (B, S, C)
    if allowed is None:
        allowed = torch.ones(x.size(0), x.size(1), src.size(1), dtype=torch.bool)
    heads, maps = [], []
    for i in range(H):
        q1, q2 = Q[..., 2 * i * D:(2 * i + 1) * D], Q[..., (2 * i + 1) * D:(2 * i + 2) * D]
        k1, k2 = K[..., 2 * i * D:(2 * i + 1) * D], K[..., (2 * i + 1) * D:(2 * i + 2) * D]
        v = V[..., 2 * i * D:(2 * i + 2) * D]  # (B, S, 2d)
        if rope is not None:
            q1, q2, k1, k2 = (rope(t[:, None])[:, 0] for t in (q1, q2, k1, k2))
        s1 = (q1 @ k1.transpose(1, 2)) / math.sqrt(D)
        s2 = (q2 @ k2.transpose(1, 2)) / math.sqrt(D)
        p1 = torch.softmax(s1.masked_fill(~allowed, float("-inf")), dim=-1)
        p2 = torch.softmax(s2.masked_fill(~allowed, float("-inf")), dim=-1)
        a = torch.where(allowed, p1 - lam * p2, torch.zeros(()))  # fully masked rows (NaN) -> 0
        o = a @ v  # (B, T, 2d)
        o = o / torch.sqrt((o * o).mean(-1, keepdim=True) + 1e-5) * m.subln.weight
        heads.append(o * (1 - lambda_init))
        maps.append(a)
    y = F.linear(torch.cat(heads, dim=-1), m.out_proj.weight, m.out_proj.bias)
    return y, torch.stack(maps, dim=1), lam


def tril(B, T, S=None):
    S = T if S is None else S
    return torch.ones(T, S, dtype=torch.bool).tril(S - T).expand(B, T, S)


CASES = ["causal", "padding", "attn_mask", "cross"]


def setup(case):
    """-> module, x, module kwargs, reference kwargs."""
    torch.manual_seed(1)
    B, T, S = 2, 5, 7
    x = torch.randn(B, T, C)
    if case == "causal":
        return make(causal=True), x, {}, {"allowed": tril(B, T)}
    if case == "padding":
        kpm = torch.ones(B, T, dtype=torch.bool)
        kpm[1, 3:] = False
        return make(), x, {"key_padding_mask": kpm}, {"allowed": kpm[:, None, :].expand(B, T, T)}
    if case == "attn_mask":
        am = torch.rand(B, T, T) > 0.4
        am[:, :, 0] = True
        am[0, 2] = False  # a query with no allowed key
        return make(), x, {"attn_mask": am}, {"allowed": am}
    ctx = torch.randn(B, S, C)
    cpm = torch.ones(B, S, dtype=torch.bool)
    cpm[0, 4:] = False
    return (make(causal=True), x, {"context": ctx, "key_padding_mask": cpm},
            {"context": ctx, "allowed": cpm[:, None, :].expand(B, T, S)})


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_matches_reference(case, use_sdpa):
    m, x, kw, rkw = setup(case)
    m.use_sdpa = use_sdpa
    with torch.no_grad():
        y, w = m(x, **kw)
        ref, _, _ = reference(m, x, **rkw)
    assert w is None
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    if case == "attn_mask":  # the fully masked query: zero head output -> out_proj bias
        torch.testing.assert_close(y[0, 2], m.out_proj.bias.detach(), atol=1e-6, rtol=0)


@pytest.mark.parametrize("case", CASES)
def test_weights_are_signed_maps(case):
    m, x, kw, rkw = setup(case)
    with torch.no_grad():
        y, w = m(x, **kw, return_weights=True)
        ref, ref_w, lam = reference(m, x, **rkw)
    assert w.shape == ref_w.shape == (x.size(0), H, x.size(1), ref_w.size(-1))
    torch.testing.assert_close(w, ref_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    live = rkw["allowed"].any(-1)[:, None].expand(-1, H, -1)  # (B, h, T): rows with an allowed key
    sums = w.sum(-1)
    torch.testing.assert_close(sums[live], torch.full_like(sums[live], 1 - lam.item()), atol=1e-5, rtol=0)
    assert (sums[~live] == 0).all()
    assert (w < 0).any()  # signed: the second map is subtracted


@pytest.mark.parametrize("use_sdpa", [True, False])
@pytest.mark.parametrize("with_rope", [False, True])
def test_self_attention_cache_in_chunks(use_sdpa, with_rope):
    m = make(causal=True)
    m.use_sdpa = use_sdpa
    torch.manual_seed(2)
    B, T = 2, 6
    x = torch.randn(B, T, C)
    angles = torch.randn(T, D // 2)
    cache, outs, start = KVCache(), [], 0
    with torch.no_grad():
        for size in (3, 1, 1, 1):
            rope = Rotation(angles[start:start + size]) if with_rope else None
            outs.append(m(x[:, start:start + size], cache=cache, rope=rope)[0])
            start += size
        ref, _, _ = reference(m, x, allowed=tril(B, T), rope=Rotation(angles) if with_rope else None)
        whole = m(x, rope=Rotation(angles) if with_rope else None)[0]
    assert len(cache) == T and cache.k.shape == (B, NH, T, D) and cache.v.shape == (B, H, T, 2 * D)
    torch.testing.assert_close(torch.cat(outs, dim=1), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(whole, ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_cross_attention_cache_reuses_source(use_sdpa):
    m, x, kw, rkw = setup("cross")
    m.use_sdpa = use_sdpa
    x2 = torch.randn_like(x[:, :2])
    cache = KVCache()
    with torch.no_grad():
        first = m(x, **kw, cache=cache)[0]
        # a second call must use the cached keys/values, not this (different) context
        second = m(x2, context=torch.zeros_like(kw["context"]), key_padding_mask=kw["key_padding_mask"],
                   cache=cache)[0]
        ref1, _, _ = reference(m, x, **rkw)
        ref2, _, _ = reference(m, x2, context=rkw["context"], allowed=rkw["allowed"][:, :2])
    assert len(cache) == kw["context"].size(1)
    torch.testing.assert_close(first, ref1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(second, ref2, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_rope_self_attention_only(use_sdpa):
    m, x, kw, rkw = setup("causal")
    m.use_sdpa = use_sdpa
    rope = Rotation(torch.randn(x.size(1), D // 2))
    with torch.no_grad():
        y = m(x, rope=rope)[0]
        ref, _, _ = reference(m, x, rope=rope, **rkw)
        plain = m(x)[0]
        _, xc, kwc, _ = setup("cross")
        cross_rope, cross = m(xc, **kwc, rope=rope)[0], m(xc, **kwc)[0]
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(y, plain, atol=1e-3)  # the rotation matters
    torch.testing.assert_close(cross_rope, cross, atol=0, rtol=0)  # cross-attention is never rotated


def test_lambda_init_and_construction():
    for layer in (1, 2, 3, 4):
        m = DifferentialAttention(CFG, layer=layer)
        assert isinstance(m.lambda_init, float)
        assert m.lambda_init == pytest.approx(0.8 - 0.6 * math.exp(-0.3 * (layer - 1)))
    assert DifferentialAttention(CFG, layer=1).lambda_init == pytest.approx(0.2)
    # the shapes it needs are the config's to check (lm.config.validate), before anything is built
    with pytest.raises(ConfigError, match=r"num_heads: 3 is not allowed; attention differential pairs heads"):
        load_config(None, ["--attention=differential", "--num_heads=3", "--embedding_dim=12"])
    with pytest.raises(ConfigError, match="embedding_dim: 18 is not allowed; it must be divisible by num_heads"):
        load_config(None, ["--attention=differential", "--num_heads=4", "--embedding_dim=18"])
    m = DifferentialAttention(CFG)
    count = lambda mod: sum(p.numel() for p in mod.parameters())
    assert count(m) == count(MultiHeadAttention(CFG)) + 4 * D + 2 * D
    names = dict(m.named_parameters())
    assert names["q_proj.weight"].shape == (C, C) and names["kv_proj.weight"].shape == (2 * C, C)
    assert names["out_proj.weight"].shape == (C, C)
    assert all(names[f"lambda_{n}"].shape == (D,) for n in ("q1", "k1", "q2", "k2"))


@pytest.mark.parametrize("use_sdpa", [True, False])
def test_causal_and_gradients(use_sdpa):
    m = make(causal=True)
    m.use_sdpa = use_sdpa
    torch.manual_seed(3)
    x = torch.randn(2, 6, C)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, C)
    with torch.no_grad():
        y, y2 = m(x)[0], m(x2)[0]
    torch.testing.assert_close(y[:, :4], y2[:, :4], atol=0, rtol=0)
    assert not torch.allclose(y[:, 4:], y2[:, 4:])
    m.zero_grad()
    (m(x)[0] * torch.randn(2, 6, C)).sum().backward()
    for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
        g = getattr(m, name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
