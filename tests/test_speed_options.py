"""The speed options, each a named setting: optimizer (adamw | muon), norm (layernorm | rmsnorm), qk_norm,
activation (gelu | relu2), tie_head, zero_init, lr_schedule wsd, dtype auto, compile; and the preallocated
KV cache.

Every setting trains a few steps through train.py, resumes, and round-trips through its checkpoint; Muon
updates exactly the blocks' weight matrices and AdamW the rest; dtype auto's choice and its reason; compile
gives the losses of eager mode, plain checkpoints, and falls back to eager when the compiler fails."""

import pytest
import torch
import torch._dynamo

from helpers import cli, losses, tiny
from lm.checkpoint import load as load_checkpoint
from lm.checkpoint import load_model
from lm.config import ConfigError, ModelConfig
from lm.config import load as load_config
from lm.device import choose_dtype, cpu_bf16_flags
from lm.generate import generate
from lm.jobs import make_model
from lm.nn import GPT, EncoderDecoder, KVCache
from lm.optim import make_optimizer, muon_parameters
from lm.trainer import lr_at, train

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = {
    "muon": ["--optimizer=muon", "--muon_lr=0.03"],
    "rmsnorm": ["--norm=rmsnorm"],
    "qk_norm": ["--qk_norm=true"],
    "relu2": ["--activation=relu2"],
    "untied": ["--tie_head=false"],
    "zero_init": ["--tie_head=false", "--zero_init=true"],
    "wsd": ["--lr_schedule=wsd", "--decay_fraction=0.5"],
    "bf16": ["--dtype=bfloat16"],
    "compile": ["--compile=true"],
    "all": ["--optimizer=muon", "--norm=rmsnorm", "--qk_norm=true", "--activation=relu2", "--tie_head=false",
            "--zero_init=true", "--lr_schedule=wsd", "--pos_encoding=rope"],
}


def cfg_of(*overrides):
    return load_config(None, ["--device=cpu", *overrides])


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_setting_trains_resumes_and_round_trips(small_corpus, tmp_path, name):
    out = tmp_path / "run"
    opts = OPTIONS[name]
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--eval_interval=2", *opts))
    assert done.returncode == 0, done.stderr
    ckpt = load_checkpoint(out / "last.pt")
    saved = {k: v for section in ckpt["config"].values() for k, v in section.items()}
    for opt in opts:
        key, value = opt[2:].split("=")
        assert str(saved[key]).lower() == value.lower(), key
    model, vocab, cfg = load_model(out / "last.pt")
    fresh = make_model(cfg)
    fresh.load_state_dict(ckpt["model"])
    idx = torch.tensor([vocab.encode("def ").tolist()])
    assert torch.equal(model(idx)[0], fresh.eval()(idx)[0])
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=6", "--eval_interval=2", "--resume", *opts))
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "last.pt")["step"] == 6


def test_resuming_with_another_optimizer_is_refused(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2",
                                  "--optimizer=adamw")).returncode == 0
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--resume", "--optimizer=muon"))
    assert done.returncode != 0
    assert "train.optimizer: checkpoint has 'adamw', config has 'muon'" in done.stderr, done.stderr


# ----------------------------------------------------------------------------- Muon's share

@pytest.mark.parametrize("kind", ["gpt", "seq2seq"])
def test_muon_updates_exactly_the_blocks_weight_matrices(kind):
    cfg = cfg_of("--optimizer=muon", "--tie_head=false", "--bias=true", "--num_blocks=2", "--embedding_dim=32",
                 "--task=copy" if kind == "seq2seq" else "--task=lm")
    cfg.model.vocab_size = 13
    torch.manual_seed(0)
    model = make_model(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    matrices = {names[id(p)] for p in muon_parameters(model)}
    blocks = ("encoder.blocks." if kind == "seq2seq" else "blocks.", "blocks.")
    expected = {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith(blocks)}
    assert matrices == expected and matrices
    assert not any("embed" in n or n.startswith("head") for n in matrices)
    opt = make_optimizer(model, cfg, torch.device("cpu"))
    parts = {name: {id(p) for g in o.param_groups for p in g["params"]} for name, o in opt.parts.items()}
    assert parts["adamw"].isdisjoint(parts["muon"])
    assert parts["adamw"] | parts["muon"] == {id(p) for p in model.parameters()}
    assert {names[i] for i in parts["muon"]} == expected

    def changed_after_step(frozen: str) -> set[str]:
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        src = torch.randint(3, 13, (2, 5))
        out = model(src, src, targets=src)[1] if kind == "seq2seq" else model(src, src)[1]
        out.backward()
        for group in opt.parts[frozen].param_groups:
            group["lr"], group["weight_decay"] = 0.0, 0.0
        opt.step()
        opt.zero_grad()
        return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}

    assert changed_after_step(frozen="adamw") == expected  # Muon alone moves the matrices
    assert changed_after_step(frozen="muon").isdisjoint(expected)  # AdamW alone moves everything else


def test_muon_state_is_saved_and_restored(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2",
                                  "--optimizer=muon")).returncode == 0
    state = load_checkpoint(out / "last.pt")["optimizer"]
    assert set(state) == {"adamw", "muon"}
    assert all("momentum_buffer" in s for s in state["muon"]["state"].values())


# ----------------------------------------------------------------------------- model options

def test_zero_init_starts_residual_projections_and_untied_head_at_zero():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, block_size=8, num_blocks=2, num_heads=2, embedding_dim=16, tie_head=False,
                      zero_init=True)
    model = GPT(cfg)
    for name, p in model.named_parameters():
        if name.endswith(("out_proj.weight", "ff.proj.weight", "head.weight")):
            assert (p == 0).all(), name
        elif name.endswith("tok.weight"):
            assert p.std() > 0.01
    logits = model(torch.randint(11, (1, 8)))[0]
    assert (logits == 0).all()  # uniform first predictions
    tied = GPT(ModelConfig(vocab_size=11, block_size=8, num_blocks=2, num_heads=2, embedding_dim=16, zero_init=True))
    assert tied.head.weight is tied.embed.tok.weight and tied.head.weight.std() > 0.01


def test_untied_head_is_its_own_matrix_and_flops_are_counted_once():
    kw = dict(vocab_size=11, block_size=8, num_blocks=2, num_heads=2, embedding_dim=16)
    tied, untied = GPT(ModelConfig(**kw)), GPT(ModelConfig(**kw, tie_head=False))
    assert untied.head.weight is not untied.embed.tok.weight
    assert untied.num_params() == tied.num_params() + 11 * 16
    assert untied.flops_per_token() == tied.flops_per_token()
    s2s_tied, s2s_untied = EncoderDecoder(ModelConfig(**kw)), EncoderDecoder(ModelConfig(**kw, tie_head=False))
    assert s2s_untied.flops_per_token() == s2s_tied.flops_per_token()


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_qk_norm_rmsnorm_relu2_keep_cached_decoding_exact(pos):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, block_size=16, num_blocks=2, num_heads=2, embedding_dim=16, pos_encoding=pos,
                      qk_norm=True, norm="rmsnorm", activation="relu2")
    model = GPT(cfg).eval()
    assert isinstance(model.blocks[0].self_attn.q_norm, torch.nn.RMSNorm)
    assert isinstance(model.ln_f, torch.nn.RMSNorm)
    prompt = torch.randint(11, (2, 3))
    cached = torch.cat(list(generate(model, prompt, 12, temperature=0.0)), 1)
    full = torch.cat(list(generate(model, prompt, 12, temperature=0.0, use_cache=False)), 1)
    assert torch.equal(cached, full)


def test_unknown_option_names_are_refused_with_the_valid_ones():
    for key, bad, valid in (("norm", "batchnorm", "layernorm, rmsnorm"), ("activation", "swish", "gelu, relu2"),
                            ("optimizer", "sgd", "adamw, muon"), ("lr_schedule", "linear", "cosine, noam, wsd")):
        with pytest.raises(ConfigError, match=f"{key}: '{bad}' is not allowed; choose one of: {valid}"):
            cfg_of(f"--{key}={bad}")
    with pytest.raises(ConfigError, match="decay_fraction"):
        cfg_of("--decay_fraction=0")


# ----------------------------------------------------------------------------- schedule and dtype

def test_wsd_schedule_warms_up_holds_then_decays_linearly_to_min_lr():
    cfg = cfg_of("--lr_schedule=wsd", "--lr=1e-2", "--min_lr=1e-3", "--warmup_iters=10", "--decay_fraction=0.25")
    lrs = [lr_at(s, cfg, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[9] == pytest.approx(1e-2)
    assert all(lr == pytest.approx(1e-2) for lr in lrs[10:76])
    assert lrs[88] == pytest.approx(1e-3 + 9e-3 * 12 / 25)  # linear in the last 25 steps
    assert lrs[99] == pytest.approx(1e-3 + 9e-3 / 25) and min(lrs) >= 1e-3


def test_dtype_auto_chooses_by_what_the_cpu_computes_and_says_why():
    cpu = torch.device("cpu")
    native = "processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 fma\n"
    emulated = "processor : 0\nflags : fpu sse avx2 avx512f fma\n"
    arm = "processor : 0\nFeatures : fp asimd bf16 i8mm\n"
    assert cpu_bf16_flags(native) == ["avx512_bf16"] and cpu_bf16_flags(emulated) == []
    dtype, why = choose_dtype("auto", cpu, native)
    assert dtype == torch.bfloat16 and "natively (avx512_bf16)" in why
    dtype, why = choose_dtype("auto", cpu, emulated)
    assert dtype == torch.float32 and "no native bfloat16" in why
    assert choose_dtype("auto", cpu, arm)[0] == torch.bfloat16
    assert choose_dtype("float32", cpu, native) == (torch.float32, "as configured")


def test_the_start_line_explains_the_dtype(small_corpus, tmp_path):
    done = cli("train.py", *tiny(small_corpus, tmp_path / "run", "--max_iters=1", "--dtype=auto"))
    assert done.returncode == 0, done.stderr
    expected = choose_dtype("auto", torch.device("cpu"))
    assert f"dtype {str(expected[0]).replace('torch.', '')} ({expected[1]})" in done.stdout


# ----------------------------------------------------------------------------- the KV cache

def test_the_kv_cache_writes_in_place_without_reallocating():
    cache = KVCache(capacity=16)
    k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    cache.append(k, v)
    buffer = cache._k.data_ptr()
    steps = [torch.randn(2, 3, 1, 4) for _ in range(11)]
    for s in steps:
        keys, values = cache.append(s, s * 2)
    assert cache._k.data_ptr() == buffer and len(cache) == 16  # filled to capacity, never reallocated
    torch.testing.assert_close(keys, torch.cat([k, *steps], dim=2), rtol=0, atol=0)
    torch.testing.assert_close(values, torch.cat([v, *(s * 2 for s in steps)], dim=2), rtol=0, atol=0)
    cache.append(torch.randn(2, 3, 1, 4), torch.randn(2, 3, 1, 4))  # past capacity: grows, keeps the past
    assert len(cache) == 17 and torch.equal(cache.k[:, :, :16], keys)


def test_a_checkpoint_from_before_these_settings_resumes_with_what_it_used(small_corpus, tmp_path):
    """A checkpoint whose config has none of the new settings was trained with AdamW and the plain model:
    resuming it with those settings works, and with Muon is refused by name."""
    import torch as _torch

    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2",
                                  "--optimizer=adamw")).returncode == 0
    for name in ("last.pt", "best.pt"):
        ckpt = _torch.load(out / name, weights_only=True)
        for section, keys in (("model", ("norm", "qk_norm", "activation", "tie_head", "zero_init")),
                              ("train", ("optimizer", "muon_lr", "decay_fraction"))):
            for key in keys:
                del ckpt["config"][section][key]
        _torch.save(ckpt, out / name)
    refused = cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--resume"))  # default: muon
    assert refused.returncode != 0 and "train.optimizer: checkpoint has 'adamw', config has 'muon'" in refused.stderr
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--resume", "--optimizer=adamw"))
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- compile


def _train_tiny(corpus, out, *overrides):
    """Train 3 float32 steps in this process; returns the events, the per-step losses, the checkpoint."""
    torch._dynamo.reset()  # no compiled code carried over from another test
    events = []
    cfg = load_config(None, tiny(corpus, out, "--max_iters=3", "--eval_interval=3", "--dtype=float32", *overrides))
    train(cfg, on_event=events.append)
    return events, losses(out), load_checkpoint(out / "last.pt")


def _warnings(events):
    return [e["message"] for e in events if e["event"] == "warning"]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_compile_gives_the_losses_of_eager_mode_and_plain_checkpoints(small_corpus, tmp_path, optimizer):
    """Same losses to float tolerance. The weights too with AdamW; Muon normalises and orthogonalises its
    update (five Newton-Schulz iterations), which amplifies the compiled forward's float32 rounding
    differences in the weights, so there the losses are what is compared."""
    from torch._dynamo.utils import counters

    _, eager, eager_ckpt = _train_tiny(small_corpus, tmp_path / "eager", f"--optimizer={optimizer}")
    counters.clear()
    events, compiled, ckpt = _train_tiny(small_corpus, tmp_path / "compiled", "--compile=true",
                                         f"--optimizer={optimizer}")
    assert counters["stats"]["unique_graphs"] > 0  # the training forward really went through torch.compile
    assert next(e for e in events if e["event"] == "start")["compiled"] is True
    assert _warnings(events) == []
    assert [s for s, _ in compiled] == [s for s, _ in eager] == [1, 2, 3]
    assert [loss for _, loss in compiled] == pytest.approx([loss for _, loss in eager], rel=1e-4)
    assert list(ckpt["model"]) == list(eager_ckpt["model"])  # no _orig_mod. prefixes
    if optimizer == "adamw":
        for name, value in ckpt["model"].items():
            assert torch.allclose(value, eager_ckpt["model"][name], rtol=1e-4, atol=1e-5), name
    model, _, _ = load_model(tmp_path / "compiled" / "last.pt")  # loads like any checkpoint
    assert model.num_params() > 0


def test_compile_falls_back_to_eager_with_a_warning_when_the_compiler_fails(small_corpus, tmp_path, monkeypatch):
    def broken_backend(graph, example_inputs):
        raise RuntimeError("no working C++ compiler (test)")

    _, eager, _ = _train_tiny(small_corpus, tmp_path / "eager")
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend=broken_backend))
    events, fallback, _ = _train_tiny(small_corpus, tmp_path / "fallback", "--compile=true")
    (warning,) = _warnings(events)
    assert "torch.compile failed" in warning and "no working C++ compiler (test)" in warning
    assert "training goes on in eager mode" in warning
    assert fallback == eager  # the failed step was computed eagerly: the same run, exactly


def test_compile_where_torch_cannot_compile_trains_eagerly_and_says_so(small_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    events, _, _ = _train_tiny(small_corpus, tmp_path / "run", "--compile=true")
    assert next(e for e in events if e["event"] == "start")["compiled"] is False
    assert _warnings(events) == ["compile: true, but torch.compile is not supported on this Python or platform; "
                                 "training runs in eager mode"]


# ----------------------------------------------------------------------------- the attention core under bf16


def test_the_attention_core_runs_in_float32_under_bf16_autocast_on_the_cpu():
    from lm.nn.attention import FLOAT32_CORE_BELOW, sdpa

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 16, generator=g).bfloat16().requires_grad_() for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = sdpa(q, k, v, None, True, 0.0)
        kept = sdpa(q, k, v, None, True, 0.0, float32_on_cpu=False)
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert y.dtype == kept.dtype == torch.bfloat16
    assert torch.equal(y, expected.bfloat16())  # computed in float32, rounded once at the end
    y.float().sum().backward()
    assert q.grad is not None and q.grad.dtype == torch.bfloat16
    # long keys and wide heads keep the bfloat16 kernel (faster there); so does bfloat16 outside autocast
    # (a model cast to bfloat16 by its user)
    long = torch.randn(1, 1, FLOAT32_CORE_BELOW // 16, 16).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(sdpa(long, long, long, None, True, 0.0),
                           torch.nn.functional.scaled_dot_product_attention(long, long, long, is_causal=True))
    plain = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(sdpa(q, k, v, None, True, 0.0), plain)
