"""Which dtype every matrix product of a whole training step runs in, recorded as it runs.

A speed choice that holds on one CPU can be a disaster on another: torch.optim.Muon casts every
gradient to bfloat16 for its Newton-Schulz iterations, which a CPU without native bf16 emulates
~100x slower than float32, so the shipped config ran 5x slower there. Nothing here times anything:
a TorchDispatchMode records every matmul-like operation (mm, bmm, addmm, baddbmm, linear, the
attention kernels) of a real training step (lm.trainer.train_step: forward, backward, clipping and
every optimizer's update) with the dtypes of its inputs, and the tests assert:
    float32 run   no matrix product in bfloat16 or float16, anywhere (the optimizers included);
    bfloat16 run  every matrix product in bfloat16, except the attention core that lm.nn.attention.sdpa
                  keeps in float32 for short keys and small heads (T_k x head size < FLOAT32_CORE_BELOW),
                  and there only.
for each optimizer and for the model options (norms, activations, heads, positions, differential
attention, the encoder-decoder). compile is not covered here: its generated kernels bypass the aten
dispatcher; tests/test_speed_options.py shows compiled and eager steps give the same losses.
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lm.config import load
from lm.nn.attention import FLOAT32_CORE_BELOW
from lm.trainer import Run, prepare_job, train_step

pytestmark = pytest.mark.usefixtures("one_thread")

# matrix products; not vector ones (aten.dot: differential attention's lambda, exp(l_q1 . l_k1) - ..., is a
# product of two parameter vectors of head size, computed in float32 as every parameter is)
MATMUL_OPS = ("mm", "bmm", "addmm", "baddbmm", "addbmm", "_addmm_activation", "linear", "matmul")


def is_matmul_like(name: str) -> bool:
    """aten op names ('aten.mm.default', 'aten._scaled_dot_product_flash_attention_for_cpu_backward.default')
    that multiply matrices."""
    base = name.split(".")[1] if name.startswith("aten.") else name.split(".")[0]
    return base in MATMUL_OPS or "attention" in base or "conv" in base


class MatmulRecorder(TorchDispatchMode):
    """Records (op name, dtypes of its floating-point tensor inputs) for every matmul-like aten op. For an
    attention kernel, the dtypes of its first three (q, k, v; backward: grad_out, q, k): the rest holds
    its float32 softmax statistics (logsumexp) whatever the dtype."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, tuple[torch.dtype, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if is_matmul_like(name):
            flat = [a for a in [*args, *(kwargs or {}).values()] if isinstance(a, torch.Tensor)]
            dtypes = tuple(a.dtype for a in flat if a.is_floating_point())
            self.calls.append((name, dtypes[:3] if "attention" in name else dtypes))
        return func(*args, **(kwargs or {}))


LONG_KEYS = ["--block_size=256", "--num_heads=1", "--embedding_dim=64", "--batch_size=1"]  # T_k x d = 256 x 64
MODELS = {
    "plain": [],
    "options": ["--norm=rmsnorm", "--qk_norm=true", "--activation=relu2", "--tie_head=false", "--zero_init=true",
                "--pos_encoding=rope", "--bias=true"],
    "differential": ["--attention=differential"],
    "seq2seq": ["--task=copy", "--max_len=6", "--eval_long_len=6", "--held_out_size=4", "--block_size=16"],
    "long_keys": LONG_KEYS,
}


def record_step(corpus, out, optimizer: str, dtype: str, model: list[str], float32_core: bool = True):
    """Two real training steps of a tiny run; returns the run and its matmul-like calls. float32_core False
    turns off sdpa's float32 attention core (its float32_on_cpu switch) in every attention module."""
    cfg = load(None, [f"--data_path={corpus}", f"--out_dir={out}", "--device=cpu", "--block_size=16",
                      "--batch_size=2", "--num_blocks=1", "--num_heads=2", "--embedding_dim=32", "--max_iters=2",
                      "--dropout=0.0", f"--optimizer={optimizer}", f"--dtype={dtype}", "--compile=false", *model])
    run = Run(cfg, prepare_job(cfg, None, out, lambda e: None), "dispatch", out)
    switches = [m for m in run.model.modules() if hasattr(m, "float32_on_cpu")]
    assert switches  # every attention module has the switch
    for m in switches:
        m.float32_on_cpu = float32_core
    run.model.train()
    batches = run.job.batches(start=0)
    recorder = MatmulRecorder()
    with recorder:
        train_step(run, batches, cfg.train.lr)
        train_step(run, batches, cfg.train.lr)  # optimizer state exists from here on (momentum buffers)
    return run, recorder.calls


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_float32_run_never_computes_a_product_in_half_precision(small_corpus, tmp_path, optimizer, model):
    run, calls = record_step(small_corpus, tmp_path / "run", optimizer, "float32", MODELS[model])
    assert run.dtype == torch.float32
    assert len(calls) > 10, calls  # forward, backward and (muon) the optimizer's products were seen
    half = [(name, dtypes) for name, dtypes in calls if {torch.bfloat16, torch.float16} & set(dtypes)]
    assert not half, f"a float32 run computed in half precision: {half[:5]}"
    if optimizer == "muon":  # the Newton-Schulz iterations ran, in float32
        assert any(name.startswith("aten.addmm") or name.startswith("aten.baddbmm") for name, _ in calls)


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_bfloat16_run_computes_its_products_in_bfloat16_but_the_short_attention_core(small_corpus, tmp_path,
                                                                                        optimizer, model):
    run, calls = record_step(small_corpus, tmp_path / "run", optimizer, "bfloat16", MODELS[model])
    assert run.dtype == torch.bfloat16
    head_dim = run.cfg.model.embedding_dim // run.cfg.model.num_heads
    float32_core = run.cfg.model.block_size * head_dim < FLOAT32_CORE_BELOW  # the rule sdpa states
    in_float32 = [name for name, dtypes in calls if torch.float32 in dtypes]
    in_bf16 = [name for name, dtypes in calls if dtypes and set(dtypes) == {torch.bfloat16}]
    # the projections, the head (2-D products) and the optimizer's products are in bfloat16
    assert {"aten.mm.default", "aten.addmm.default"} & set(in_bf16), in_bf16
    if optimizer == "muon":  # Newton-Schulz in bfloat16, as the run computes
        assert any(name.startswith(("aten.addmm", "aten.baddbmm")) for name in in_bf16), in_bf16
    if not float32_core:
        assert not in_float32, f"long keys: the attention core runs in bfloat16 too, yet {in_float32[:5]}"
        return
    # short keys: float32 only in the attention core (a fused attention kernel, or the bmm of its math
    # path), never a 2-D product; and with sdpa's float32 core switched off, none at all
    assert in_float32 and all("attention" in name or name == "aten.bmm.default" for name in in_float32), in_float32
    _, calls_without = record_step(small_corpus, tmp_path / "without", optimizer, "bfloat16", MODELS[model],
                                   float32_core=False)
    still = [name for name, dtypes in calls_without if torch.float32 in dtypes]
    if model == "differential":
        # its values are 2 x head size wide, which PyTorch's fused CPU kernel does not take: the core goes to
        # SDPA's math path, which computes bfloat16 inputs in float32 on the CPU (PyTorch's choice), and
        # only there
        assert set(still) == {"aten.bmm.default"}, still
    else:
        assert not still, still


def test_muon_orthogonalises_in_the_runs_dtype(small_corpus, tmp_path):
    """The optimizer itself, apart from the model: Muon's Newton-Schulz dtype follows the run's dtype."""
    for dtype, expected in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        cfg = load(None, [f"--data_path={small_corpus}", f"--out_dir={tmp_path / dtype}", "--device=cpu",
                          "--optimizer=muon", f"--dtype={dtype}", "--num_blocks=1", "--embedding_dim=16",
                          "--num_heads=2", "--block_size=8"])
        run = Run(cfg, prepare_job(cfg, None, tmp_path / dtype, lambda e: None), "dispatch", tmp_path / dtype)
        assert run.optimizer.parts["muon"].ns_dtype == expected
