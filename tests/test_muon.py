"""lm.optim.Muon: torch.optim.Muon's update rule with the Newton-Schulz iterations in the run's dtype.

Checked against torch.optim.Muon itself (bfloat16, where both orthogonalise in bfloat16: equal to rounding),
against a slow float64 transcription of the algorithm (float32), and for its state dict, which loads
either way between the two (checkpoints written with torch.optim.Muon resume)."""

import copy
import math

import pytest
import torch

from lm.optim import NS_COEFFICIENTS, Muon, orthogonalize

pytestmark = pytest.mark.usefixtures("one_thread")

# square, tall and wide, two of one shape, and a tall one that is a wide one's transpose (one batch)
SHAPES = [(32, 32), (64, 32), (32, 64), (32, 32), (64, 32), (48, 16)]


def matrices(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(0.1 * torch.randn(*s, generator=g, dtype=dtype)) for s in SHAPES]


def gradients(step):
    g = torch.Generator().manual_seed(100 + step)
    return [torch.randn(*s, generator=g) for s in SHAPES]


def run_steps(opt, params, steps):
    for step in range(steps):
        for p, grad in zip(params, gradients(step)):
            p.grad = grad
        opt.step()


def reference_muon(params, steps, lr, weight_decay, momentum=0.95):
    """Muon as its paper and torch's docs write it, one matrix at a time, in float64."""
    a, b, c = NS_COEFFICIENTS
    bufs = [torch.zeros_like(p) for p in params]
    for step in range(steps):
        for p, buf, grad in zip(params, bufs, [g.double() for g in gradients(step)]):
            buf.mul_(momentum).add_(grad, alpha=1 - momentum)  # B = mu B + (1 - mu) g
            update = (1 - momentum) * grad + momentum * buf  # nesterov
            X = update.T if update.size(0) > update.size(1) else update
            X = X / max(X.norm().item(), 1e-7)
            for _ in range(5):
                A = X @ X.T
                X = a * X + (b * A + c * A @ A) @ X
            O = X.T if update.size(0) > update.size(1) else X
            rows, cols = p.shape
            p.mul_(1 - lr * weight_decay).sub_(lr * math.sqrt(max(1.0, rows / cols)) * O)
    return params


def test_bfloat16_equals_torch_optim_muon_to_rounding():
    ours, theirs = matrices(), matrices()
    start = [p.detach().clone() for p in ours]
    run_steps(Muon(ours, lr=0.05, weight_decay=0.1, ns_dtype=torch.bfloat16), ours, 3)
    run_steps(torch.optim.Muon(theirs, lr=0.05, weight_decay=0.1), theirs, 3)
    for p, q, p0 in zip(ours, theirs, start):
        moved = (q - p0).norm()
        assert moved > 0
        assert (p - q).norm() / moved < 2e-2  # bfloat16 keeps 8 bits: rounding differs by ~0.4% per product


def test_float32_equals_a_float64_reference():
    ours = matrices()
    reference = [p.detach().double().clone() for p in ours]
    start = [p.detach().clone() for p in ours]
    run_steps(Muon(ours, lr=0.05, weight_decay=0.1, ns_dtype=torch.float32), ours, 3)
    reference_muon(reference, 3, lr=0.05, weight_decay=0.1)
    for p, r, p0 in zip(ours, reference, start):
        assert (p.double() - r).norm() / (r - p0.double()).norm() < 1e-5


def test_float32_is_far_from_bfloat16_and_bfloat16_from_the_reference():
    """The two dtypes really compute differently (so the tests above tell them apart)."""
    f32, bf16 = matrices(), matrices()
    reference = [p.detach().double().clone() for p in f32]
    start = [p.detach().clone() for p in f32]
    run_steps(Muon(f32, lr=0.05, ns_dtype=torch.float32), f32, 2)
    run_steps(Muon(bf16, lr=0.05, ns_dtype=torch.bfloat16), bf16, 2)
    reference_muon(reference, 2, lr=0.05, weight_decay=0.1)
    for p, q, r, p0 in zip(f32, bf16, reference, start):
        assert (q.double() - r).norm() / (r - p0.double()).norm() > 1e-3


def test_matrices_of_one_shape_are_orthogonalised_as_one_batch_with_the_same_result():
    g = torch.Generator().manual_seed(0)
    G = torch.randn(5, 24, 40, generator=g)
    together = orthogonalize(G, torch.float32)
    alone = torch.stack([orthogonalize(m, torch.float32) for m in G])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-6)
    tall = orthogonalize(G[0].T.contiguous(), torch.float32)
    torch.testing.assert_close(tall, alone[0].T, rtol=1e-5, atol=1e-6)


def test_orthogonalize_pushes_every_singular_value_towards_one():
    g = torch.Generator().manual_seed(1)
    G = torch.randn(32, 64, generator=g) * torch.logspace(-3, 1, 64)  # singular values over 4 decades
    s = torch.linalg.svdvals(orthogonalize(G, torch.float32))
    assert 0.5 < s.min() and s.max() < 1.5, s


@pytest.mark.parametrize("direction", ["torch to ours", "ours to torch"])
def test_state_dicts_load_either_way_and_continue_alike(direction):
    first, second = (torch.optim.Muon, Muon) if direction == "torch to ours" else (Muon, torch.optim.Muon)
    kwargs = {"ns_dtype": torch.bfloat16}
    a = matrices()
    opt_a = first(a, lr=0.05, **(kwargs if first is Muon else {}))
    run_steps(opt_a, a, 2)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = second(b, lr=0.05, **(kwargs if second is Muon else {}))
    opt_b.load_state_dict(copy.deepcopy(opt_a.state_dict()))  # as a checkpoint holds it: its own tensors
    assert opt_b.state_dict()["param_groups"] == opt_a.state_dict()["param_groups"]
    for step in range(2, 4):  # both continue from the same momentum buffers
        for p, q, grad in zip(a, b, gradients(step)):
            p.grad, q.grad = grad, grad.clone()
        opt_a.step()
        opt_b.step()
    for p, q in zip(a, b):
        assert (p - q).norm() / p.norm() < 1e-3


def test_bad_settings_are_refused_with_the_value():
    with pytest.raises(ValueError, match="shape"):
        Muon([torch.nn.Parameter(torch.zeros(3))], lr=0.1)
    with pytest.raises(ValueError, match="'sqrt'"):
        Muon(matrices(), adjust_lr_fn="sqrt")
