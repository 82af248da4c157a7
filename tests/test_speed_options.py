"""The speed options, each a named setting: optimizer (adamw | muon), norm (layernorm | rmsnorm), qk_norm,
activation (gelu | relu2), tie_head, zero_init, lr_schedule wsd, dtype auto, compile; and the preallocated
KV cache.

Every setting trains a few steps through train.py, resumes, and round-trips through its checkpoint; every
setting changes what is computed, each in its own way (against the plain run from the same seed); Muon
updates exactly the blocks' weight matrices and AdamW the rest; dtype auto's choice and its reason; compile
gives the losses of eager mode, plain checkpoints, and falls back to eager when the compiler fails."""

import dataclasses
import math

import pytest
import torch
import torch._dynamo
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import cli, losses, require_compiler, tiny
from lm.checkpoint import load as load_checkpoint
from lm.checkpoint import load_model
from lm.config import ConfigError, ModelConfig
from lm.config import load as load_config
from lm.device import choose_dtype, cpu_bf16_flags
from lm.generate import generate
from lm.nn import GPT, EncoderDecoder, KVCache, make_model, token_loss
from lm.optim import make_optimizer, muon_parameters
from lm.trainer import Run, lr_at, prepare_job, train, train_step

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


def tiny_params(vocab_size: int, tied: bool = True) -> int:
    """The parameters of helpers.tiny's model, counted by hand: width C = 16, T = 16 learned positions, one
    block of two LayerNorms (weight and bias), q (C x C), k and v (C x 2C) and out (C x C) projections and a
    C x 4C, 4C x C feed-forward, every linear layer with its bias; a final LayerNorm; the head tied to the
    token embedding (or a V x C matrix of its own)."""
    C, T = 16, 16
    block = 2 * (C + C) + (C * C + C) + (C * 2 * C + 2 * C) + (C * C + C) + (C * 4 * C + 4 * C) + (4 * C * C + C)
    return vocab_size * C + T * C + block + (C + C) + (0 if tied else vocab_size * C)


MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}


@pytest.mark.parametrize("name", list(OPTIONS))
@pytest.mark.slow
def test_every_setting_trains_resumes_and_round_trips(small_corpus, tmp_path, name):
    """train.py (float32 unless the setting is the dtype) saves the setting in its checkpoint, and load_model
    rebuilds the model the setting describes: a model built here from the settings themselves (not from the
    checkpoint's config) takes the checkpoint's weights, every one by name and shape, and computes the same
    logits. The run then resumes."""
    out = tmp_path / "run"
    opts = OPTIONS[name]
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--eval_interval=2", "--dtype=float32", *opts))
    assert done.returncode == 0, done.stderr
    ckpt = load_checkpoint(out / "last.pt")
    saved = {k: v for section in ckpt["config"].values() for k, v in section.items()}
    given = dict(opt[2:].split("=") for opt in opts)
    for key, value in given.items():
        assert str(saved[key]).lower() == value.lower(), key
    described = {k: {"true": True, "false": False}.get(v, v) for k, v in given.items() if k in MODEL_KEYS}
    expected = GPT(ModelConfig(vocab_size=len(ckpt["tokenizer"]["chars"]), block_size=16, num_blocks=1,
                               num_heads=2, embedding_dim=16, **described)).eval()
    expected.load_state_dict(ckpt["model"])  # strict: exactly these parameters
    model, vocab, _ = load_model(out / "last.pt")
    idx = torch.tensor([vocab.encode("def ").tolist()])
    assert torch.equal(model(idx)[0], expected(idx)[0])
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=6", "--eval_interval=2", "--dtype=float32",
                                 "--resume", *opts))
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(out / "last.pt")["step"] == 6


@pytest.mark.slow
def test_resuming_with_another_optimizer_is_refused(small_corpus, tmp_path):
    out = tmp_path / "run"
    assert cli("train.py", *tiny(small_corpus, out, "--max_iters=2", "--eval_interval=2",
                                  "--optimizer=adamw")).returncode == 0
    done = cli("train.py", *tiny(small_corpus, out, "--max_iters=4", "--resume", "--optimizer=muon"))
    assert done.returncode != 0
    assert "train.optimizer: checkpoint has 'adamw', config has 'muon'" in done.stderr, done.stderr


# ----------------------------------------------------------------------------- what each setting computes

class Setting:
    """What train.py builds for some settings (on helpers.tiny's model, float32 and without weight decay
    unless they say otherwise): the Run, holding model, optimizer, dtype and compiled forward; or the
    config of a whole run."""

    def __init__(self, corpus, out, opts):
        self.corpus, self.out, self.opts = corpus, out, opts

    def config(self, *extra):
        return load_config(None, tiny(self.corpus, self.out, "--dtype=float32", "--weight_decay=0", *self.opts,
                                      *extra))

    def run(self) -> Run:
        cfg = self.config()
        return Run(cfg, prepare_job(cfg, None, self.out, lambda e: None), "effects", self.out)


def _tokens(run: Run) -> torch.Tensor:
    return torch.randint(run.cfg.model.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))


def _forward_recording(model, modules, idx, pre=False):
    """model(idx) in eval mode; returns its logits and (module, input, output) of every call of one of the
    modules (a list, or a module class: all of the model's of that class); pre: (module, input), recorded
    before the call."""
    calls = []
    if not isinstance(modules, list):
        modules = [m for m in model.modules() if isinstance(m, modules)]
    if pre:
        hooks = [m.register_forward_pre_hook(lambda m, args: calls.append((m, args[0]))) for m in modules]
    else:
        hooks = [m.register_forward_hook(lambda m, args, out: calls.append((m, args[0], out))) for m in modules]
    try:
        with torch.no_grad():
            logits = model.eval()(idx)[0]
    finally:
        for h in hooks:
            h.remove()
    return logits, calls


def _rms(x: torch.Tensor) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) over the last dimension: RMSNorm with its initial unit gain."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + torch.finfo(x.dtype).eps)


def _rmsnorm_does_not_subtract_the_mean(setting, on):
    """Every norm of the residual stream the forward calls (both of each block's and the final one): RMSNorm
    x / rms(x) * g, no mean subtracted and no bias; plain: LayerNorm (x - mean) / sqrt(var + 1e-5) * g + b."""
    run = setting.run()
    norms = [m for n, m in run.model.named_modules()  # each block's norm_self and norm_ff, ln_f; not qk_norm's
             if n == "ln_f" or n.rsplit(".", 1)[-1].startswith("norm_")]
    _, calls = _forward_recording(run.model, norms, _tokens(run))
    assert len(calls) == 2 * run.cfg.model.num_blocks + 1
    for m, x, y in calls:
        if on:
            torch.testing.assert_close(y, _rms(x) * m.weight)
            assert getattr(m, "bias", None) is None
            assert not torch.allclose(y.mean(-1), torch.zeros(()), atol=1e-3)  # the mean is kept
        else:
            mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
            torch.testing.assert_close(y, (x - mean) / torch.sqrt(var + 1e-5) * m.weight + m.bias)


def _qk_norm_changes_the_attention_scores(setting, on):
    """The first block's attention weights are softmax(q k^T / sqrt(d)) over the causal keys, with q and k each
    normalised per head (RMSNorm, unit gain) before the product (and rotated after it with rope); plain: the
    raw projections. The fast (SDPA) forward's heads give the same weights times the values."""
    run = setting.run()
    model = run.model.eval()
    idx = _tokens(run)
    attn = model.blocks[0].self_attn
    with torch.no_grad():
        maps = model(idx, return_weights=True)[1].decoder_self[0]
        x, rope = model.embed(idx)
        h = model.blocks[0].norm_self(x)
        B, T, C = h.shape
        d = C // run.cfg.model.num_heads

        def heads(t):
            return t.reshape(B, T, -1, d).transpose(1, 2)  # (B, nh, T, d)

        q, k, v = heads(attn.q_proj(h)), heads(attn.kv_proj(h)[..., :C]), heads(attn.kv_proj(h)[..., C:])

        def weights(q, k):
            if rope is not None:
                q, k = rope(q), rope(k)
            scores = (q @ k.transpose(-2, -1) / math.sqrt(d)).masked_fill(torch.ones(T, T).triu(1).bool(), -math.inf)
            return scores.softmax(-1)

        normed, raw = weights(_rms(q), _rms(k)), weights(q, k)
    expected, other = (normed, raw) if on else (raw, normed)
    torch.testing.assert_close(maps, expected)
    assert not torch.allclose(maps, other, atol=1e-3)
    _, calls = _forward_recording(model, torch.nn.Linear, idx, pre=True)
    (heads_out,) = [x for m, x in calls if m is attn.out_proj]  # (B, T, C): the heads side by side
    torch.testing.assert_close(heads_out, (expected @ v).transpose(1, 2).reshape(B, T, C))


def _relu2_is_the_feed_forward_activation(setting, on):
    """Between each block's two feed-forward layers: relu(a)^2 of the first one's output a; plain: GELU(a)."""
    run = setting.run()
    model = run.model
    _, calls = _forward_recording(model, torch.nn.Linear, _tokens(run))
    fc = {id(b.ff.fc): b.ff.proj for b in model.blocks}
    outputs = {id(m): y for m, _, y in calls if id(m) in fc}
    inputs = {id(m): x for m, x, _ in calls}
    assert len(outputs) == run.cfg.model.num_blocks
    for key, a in outputs.items():
        relu2, gelu = torch.relu(a).square(), F.gelu(a)
        h = inputs[id(fc[key])]
        torch.testing.assert_close(h, relu2 if on else gelu)
        assert not torch.allclose(h, gelu if on else relu2, atol=1e-4)


def _untied_head_is_a_matrix_of_its_own(setting, on):
    """logits = h W^T for the head's input h, with W a parameter of its own (its own storage, trained);
    plain: W is the token embedding itself."""
    run = setting.run()
    model = run.model
    head, tok = model.head.weight, model.embed.tok.weight
    logits, calls = _forward_recording(model, torch.nn.Linear, _tokens(run), pre=True)
    (h,) = [x for m, x in calls if m is model.head]  # the forward calls the head once
    trained = {id(p) for part in run.optimizer.parts.values() for g in part.param_groups for p in g["params"]}
    if on:
        assert head is not tok and head.data_ptr() != tok.data_ptr() and id(head) in trained
        torch.testing.assert_close(logits, h @ head.T)
        assert not torch.allclose(logits, h @ tok.T, atol=1e-4)
    else:
        assert head is tok
        torch.testing.assert_close(logits, h @ tok.T)


def _zero_init_starts_every_block_as_the_identity(setting, on):
    """The projections that write into the residual stream (attention output, feed-forward output) start at
    zero, so each block returns its input exactly; an untied head starts at zero too, so the first logits
    are all 0 (uniform predictions). Plain: none of them is zero and every block changes its input."""
    run = setting.run()
    model = run.model
    projections = [p for n, p in model.named_parameters() if n.endswith(("out_proj.weight", "ff.proj.weight"))]
    assert len(projections) == 2 * run.cfg.model.num_blocks
    logits, calls = _forward_recording(model, type(model.blocks[0]), _tokens(run))
    assert len(calls) == run.cfg.model.num_blocks
    if on:
        assert all((p == 0).all() for p in projections)
        assert all(torch.equal(x, y[0]) for _, x, y in calls)
        if not run.cfg.model.tie_head:
            assert (model.head.weight == 0).all() and (logits == 0).all()
    else:
        assert not any((p == 0).all() for p in projections)
        assert not any(torch.allclose(x, y[0]) for _, x, y in calls)
        assert not (logits == 0).all()


def _muon_orthogonalises_the_blocks_matrix_updates(setting, on):
    """Three optimizer steps at the peak learning rates. Plain (AdamW on everything), every update is AdamW's,
    computed here from the step's gradient g (beta1 0.9, beta2 0.99, eps 1e-8, no weight decay):
        m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  W -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    With Muon the blocks' weight matrices instead move by muon_lr sqrt(max(1, A / B)) O with O orthogonalised:
    its singular values are all near 1 (0.5 to 1.5; directions the gradient lacks stay 0), which AdamW's
    elementwise update is not; everything else still moves by AdamW's update."""
    run = setting.run()
    model, t = run.model, run.cfg.train
    names = {id(p): n for n, p in model.named_parameters()}
    grads = {}
    for part in run.optimizer.parts.values():
        part.register_step_pre_hook(lambda o, args, kwargs: grads.update(
            {names[id(p)]: p.grad.clone() for g in o.param_groups for p in g["params"] if p.grad is not None}))
    assert set(run.optimizer.parts) == ({"adamw", "muon"} if on else {"adamw"})
    matrices = {names[id(p)] for p in run.optimizer.parts["muon"].param_groups[0]["params"]} if on else set()
    if on:
        assert matrices == {n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("blocks.")}
    m = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    v = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    batches = run.job.batches(start=0)
    model.train()
    orthogonal = set()
    for step in (1, 2, 3):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        grads.clear()
        train_step(run, batches, t.lr)
        for n, p in model.named_parameters():
            g = grads.get(n, torch.zeros_like(p))
            m[n] = 0.9 * m[n] + 0.1 * g
            v[n] = 0.99 * v[n] + 0.01 * g * g
            adamw = -t.lr * (m[n] / (1 - 0.9 ** step)) / ((v[n] / (1 - 0.99 ** step)).sqrt() + 1e-8)
            update = p.detach() - before[n]
            if n not in matrices:
                torch.testing.assert_close(update, adamw, rtol=1e-3, atol=1e-7, msg=n)
            elif g.abs().max() > 0:  # ("all": zero_init's zero head and projections give none at first)
                a, b = p.shape
                s = torch.linalg.svdvals(update / (t.muon_lr * math.sqrt(max(1.0, a / b))))
                assert s.max() < 1.5 and s.median() > 0.5, (n, s)
                assert not torch.allclose(update, adamw, rtol=1e-2, atol=1e-6), n
                orthogonal.add(n)
    assert orthogonal == matrices


def _wsd_holds_the_learning_rate_then_decays_linearly(setting, on):
    """The learning rates of a whole 8-step run (lr 1e-2, min_lr 1e-3, 2 warm-up steps, decay_fraction 0.5),
    step by step as the loop gives them to the optimizer: warm-up, then lr held until step 4, then a linear
    decay over the last 4 steps; plain (cosine): the cosine from step 2 to 8."""
    cfg = setting.config("--max_iters=8", "--eval_interval=8", "--lr=1e-2", "--min_lr=1e-3", "--warmup_iters=2",
                         "--decay_fraction=0.5", f"--out_dir={setting.out / 'wsd'}")
    events = []
    train(cfg, on_event=events.append)
    lrs = [e["lr"] for e in events if e["event"] == "step"]
    warm = [5e-3, 1e-2]
    wsd = warm + [1e-2, 1e-2, 1e-2] + [1e-3 + 9e-3 * left / 4 for left in (3, 2, 1)]
    cosine = warm + [1e-3 + 9e-3 * (1 + math.cos(math.pi * (s - 2) / 6)) / 2 for s in range(2, 8)]
    assert lrs == pytest.approx(wsd if on else cosine)


class MatrixProducts(TorchDispatchMode):
    """The dtypes of the floating-point inputs of every 2-D matrix product (aten mm, addmm) dispatched."""

    def __init__(self):
        super().__init__()
        self.dtypes: list[set[torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in ("aten.mm.default", "aten.addmm.default"):
            self.dtypes.append({a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()})
        return func(*args, **(kwargs or {}))


def _bfloat16_computes_the_matrix_products_in_bfloat16(setting, on):
    """Every 2-D matrix product of a training step (forward, backward, optimizer) is dispatched with bfloat16
    inputs; plain (float32): none is."""
    run = setting.run()
    run.model.train()
    with MatrixProducts() as products:
        train_step(run, run.job.batches(start=0), run.cfg.train.lr)
    assert len(products.dtypes) > 10
    assert all(d == ({torch.bfloat16} if on else {torch.float32}) for d in products.dtypes), products.dtypes


def _compile_runs_the_training_forward_through_torch_compile(setting, on):
    """The training step's forward goes through torch.compile: a graph of the model (its embedding lookup
    included) reaches the compiler backend (here one that records it and runs it as it is, so no C++
    compiler is needed), and the step's loss is the eager one; plain: nothing is compiled."""
    if not torch._dynamo.is_dynamo_supported():
        pytest.skip("torch.compile is not supported on this Python or platform")
    graphs = []

    def recording(model):
        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        return real_compile(model, backend=backend)

    real_compile, torch.compile = torch.compile, recording
    try:
        torch._dynamo.reset()
        run = setting.run()
        run.model.train()
        loss, _, _ = train_step(run, run.job.batches(start=0), run.cfg.train.lr)
    finally:
        torch.compile = real_compile
        torch._dynamo.reset()
    if on:
        assert run.compiled is not None and run.warnings == [] and graphs
        assert any("embedding" in str(node.target) for gm in graphs for node in gm.graph.nodes)
        eager = Setting(setting.corpus, setting.out / "eager", [o for o in setting.opts if o != "--compile=true"])
        eager_run = eager.run()
        eager_run.model.train()
        assert loss == pytest.approx(train_step(eager_run, eager_run.job.batches(start=0), eager_run.cfg.train.lr)[0],
                                     rel=1e-5)
    else:
        assert run.compiled is None and graphs == []


# option -> (the plain settings it is compared with, what it changes)
EFFECTS = {
    "muon": (["--optimizer=adamw"], _muon_orthogonalises_the_blocks_matrix_updates),
    "rmsnorm": (["--norm=layernorm"], _rmsnorm_does_not_subtract_the_mean),
    "qk_norm": (["--qk_norm=false"], _qk_norm_changes_the_attention_scores),
    "relu2": (["--activation=gelu"], _relu2_is_the_feed_forward_activation),
    "untied": (["--tie_head=true"], _untied_head_is_a_matrix_of_its_own),
    "zero_init": (["--zero_init=false"], _zero_init_starts_every_block_as_the_identity),
    "wsd": (["--lr_schedule=cosine"], _wsd_holds_the_learning_rate_then_decays_linearly),
    "bf16": (["--dtype=float32"], _bfloat16_computes_the_matrix_products_in_bfloat16),
    "compile": (["--compile=false"], _compile_runs_the_training_forward_through_torch_compile),
}
ALL = ["muon", "rmsnorm", "qk_norm", "relu2", "untied", "zero_init", "wsd"]  # what OPTIONS["all"] combines


@pytest.mark.parametrize("name", list(OPTIONS))
def test_every_setting_changes_what_is_computed(small_corpus, tmp_path, name):
    """Each setting, read as train.py reads it, computes what it says it does (see each check), and the plain
    setting from the same seed computes otherwise (the same check, expecting the plain computation). "all":
    every one of its settings still does, combined with the others (and rope)."""
    if name == "all":
        for part in ALL:
            EFFECTS[part][1](Setting(small_corpus, tmp_path / "all", OPTIONS["all"]), on=True)
        return
    plain, check = EFFECTS[name]
    check(Setting(small_corpus, tmp_path / "on", OPTIONS[name]), on=True)
    check(Setting(small_corpus, tmp_path / "plain", plain), on=False)


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
        logits = model(src, src)[0] if kind == "seq2seq" else model(src)[0]
        token_loss(logits, src).backward()
        for group in opt.parts[frozen].param_groups:
            group["lr"], group["weight_decay"] = 0.0, 0.0
        opt.step()
        opt.zero_grad()
        return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}

    assert changed_after_step(frozen="adamw") == expected  # Muon alone moves the matrices
    assert changed_after_step(frozen="muon").isdisjoint(expected)  # AdamW alone moves everything else


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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
@pytest.mark.slow
def test_compile_gives_the_losses_of_eager_mode_and_plain_checkpoints(small_corpus, tmp_path, optimizer):
    """Same losses to float tolerance. The weights too with AdamW; Muon normalises and orthogonalises its
    update (five Newton-Schulz iterations), which amplifies the compiled forward's float32 rounding
    differences in the weights, so there the losses are what is compared."""
    from torch._dynamo.utils import counters

    require_compiler()  # Inductor needs a C++ compiler; without one the run falls back to eager, with a warning
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
    model, _, _ = load_model(tmp_path / "compiled" / "last.pt")  # loads like any checkpoint: the tiny model,
    assert model.num_params() == tiny_params(len(ckpt["tokenizer"]["chars"]))  # every parameter once,
    assert all(torch.equal(p, ckpt["model"][n]) for n, p in model.state_dict().items())  # the compiled run's


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
    # the bfloat16 kernel: the same attention within bfloat16's precision (8 significant bits: a few of its
    # steps, 2^-8 each, of these outputs of size ~1)
    torch.testing.assert_close(kept.float(), expected, rtol=2**-6, atol=2**-6)
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
