"""Optimizers by name (``optimizer``): adamw | muon.

    adamw  AdamW on every parameter; weight decay on matrices (dim >= 2) only, not on biases, norms or
           other vectors.
    muon   Muon (momentum, then the update orthogonalised by Newton-Schulz iterations: class Muon below,
           the update rule of torch.optim.Muon) on the hidden weight matrices, those of the blocks' linear
           layers, at muon_lr; AdamW as above on everything else: embeddings, position tables, the output
           head, norms and biases (as in the modded-nanoGPT speedrun records). The Newton-Schulz
           iterations run in the run's compute dtype: bfloat16 where the run computes in bfloat16 (a GPU,
           a CPU with native bf16), float32 otherwise. (torch.optim.Muon always casts to bfloat16, which
           a CPU without native bf16 emulates ~100x slower than float32: its optimizer step then cost
           up to 20x the forward and backward together.)

Both are driven as one (Optimizers): one step, one zero_grad, one state dict, and one schedule that
scales every group's peak learning rate (lr for AdamW, muon_lr for Muon) by the same factor.
"""

from __future__ import annotations

import math

import torch

from .config import OPTIMIZERS

# the quintic Newton-Schulz coefficients (a, b, c) of Keller Jordan's Muon, as torch.optim.Muon uses them
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def orthogonalize(G: torch.Tensor, dtype: torch.dtype, steps: int = NS_STEPS,
                  coefficients: tuple[float, float, float] = NS_COEFFICIENTS, eps: float = NS_EPS) -> torch.Tensor:
    """An approximately orthogonal matrix U S' V^T for each G = U S V^T: S' is near 1 (roughly 0.5 to 1.5;
    these coefficients trade exactness for speed, as in torch.optim.Muon).

    G: (m, n), or (N, m, n) for N matrices of one shape at once (one bmm per product). In ``dtype``:
        X_0 = G / ||G||_F                      (transposed when m > n, so that X X^T is the smaller Gram matrix)
        A   = X_k X_k^T
        X_{k+1} = a X_k + (b A + c A A) X_k     (k = 0 .. steps-1)
    Each iteration applies p(s) = a s + b s^3 + c s^5 to every singular value s of X, pushing all of them
    towards 1. Returns X_steps in ``dtype``, in G's orientation.
    """
    a, b, c = coefficients
    X = G.to(dtype)
    tall = G.size(-2) > G.size(-1)
    if tall:
        X = X.mT  # (..., n, m), n < m
    X = X / X.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)
    batched = X.dim() == 3
    for _ in range(steps):
        A = X @ X.mT  # (..., r, r), r = min(m, n)
        if batched:
            B = torch.baddbmm(A, A, A, beta=b, alpha=c)  # b A + c A A
            X = torch.baddbmm(X, B, X, beta=a)  # a X + B X
        else:
            B = torch.addmm(A, A, A, beta=b, alpha=c)
            X = torch.addmm(X, B, X, beta=a)
    return X.mT if tall else X


def adjusted_lr(lr: float, shape: torch.Size, rule: str | None) -> float:
    """Muon's learning rate for a matrix of shape (A, B): rule None or "original" (Keller Jordan's)
    lr * sqrt(max(1, A / B)); "match_rms_adamw" (Moonshot, "Muon is Scalable for LLM Training")
    lr * 0.2 * sqrt(max(A, B)), an update of about AdamW's RMS."""
    A, B = shape[:2]
    if rule in (None, "original"):
        return lr * math.sqrt(max(1.0, A / B))
    if rule == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(A, B))
    raise ValueError(f"adjust_lr_fn {rule!r} is not allowed; choose None, 'original' or 'match_rms_adamw'")


class Muon(torch.optim.Optimizer):
    """Muon, with torch.optim.Muon's update rule, learning-rate adjustment, hyperparameters and state
    (a state dict of either loads into the other), and its Newton-Schulz iterations in ``ns_dtype``.

    For each matrix W with gradient g (momentum mu, nesterov, weight decay lambda, lr gamma):
        B <- mu B + (1 - mu) g                      (momentum_buffer, a lerp as in torch.optim.Muon)
        U  = lerp(g, B, mu) = (1 - mu) g + mu B     (nesterov; else U = B)
        O  = orthogonalize(U)                       (in ns_dtype)
        W <- W (1 - gamma lambda) - adjusted_lr(gamma, shape) O
    The matrices of one shape (up to a transpose) are orthogonalised together, as one batch.
    """

    def __init__(self, params, lr: float = 1e-3, weight_decay: float = 0.1, momentum: float = 0.95,
                 nesterov: bool = True, ns_coefficients: tuple[float, float, float] = NS_COEFFICIENTS,
                 eps: float = NS_EPS, ns_steps: int = NS_STEPS, adjust_lr_fn: str | None = None,
                 ns_dtype: torch.dtype = torch.float32):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"Muon: lr ({lr}), momentum ({momentum}) and weight_decay ({weight_decay}) must be >= 0")
        adjusted_lr(lr, torch.Size([1, 1]), adjust_lr_fn)  # the rule is checked here, not at the first step
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype  # not a hyperparameter of the state dict: the machine decides it
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D weight matrices only, got a parameter of shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            # updates of one shape up to a transpose, as wide (r, n) matrices, r <= n: one batch each
            by_shape: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                wide = update.mT if p.size(0) > p.size(1) else update  # (r, n)
                by_shape.setdefault(tuple(wide.shape), []).append((p, wide))
            ns = dict(dtype=self.ns_dtype, steps=group["ns_steps"], coefficients=group["ns_coefficients"],
                      eps=group["eps"])
            for pairs in by_shape.values():
                if len(pairs) > 1:
                    O = orthogonalize(torch.stack([u for _, u in pairs]), **ns)  # (N, r, n)
                else:
                    O = orthogonalize(pairs[0][1], **ns)[None]  # (1, r, n)
                for (p, _), o in zip(pairs, O):
                    step_size = adjusted_lr(lr, p.shape, group["adjust_lr_fn"])
                    p.mul_(1 - lr * wd)
                    p.add_(o.mT if p.size(0) > p.size(1) else o, alpha=-step_size)  # back to p's (m, n)
        return loss


def muon_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The hidden weight matrices: 2-D weights of the linear layers inside the blocks (attention
    projections and feed-forward layers), never embeddings, the head or vectors."""
    return [p for name, p in model.named_parameters()
            if p.requires_grad and p.dim() == 2 and ".blocks." in f".{name}" and name.endswith(".weight")]


class Optimizers:
    """Several torch optimizers stepped as one, each with its peak learning rate (from the config: a
    restored state never changes it, so a resumed run with a new lr uses the new one)."""

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = parts
        self.peak_lr = {name: opt.param_groups[0]["lr"] for name, opt in parts.items()}

    def set_lr_scale(self, scale: float) -> None:
        """Every group's lr = its optimizer's peak lr x scale (the schedule's factor for this step)."""
        for name, opt in self.parts.items():
            for group in opt.param_groups:
                group["lr"] = self.peak_lr[name] * scale

    def step(self) -> None:
        for opt in self.parts.values():
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        """AdamW alone: its own state dict (as checkpoints always held it); else {name: state dict}."""
        if list(self.parts) == ["adamw"]:
            return self.parts["adamw"].state_dict()
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state: dict) -> None:
        by_name = {"adamw": state} if "param_groups" in state else state
        if set(by_name) != set(self.parts):
            raise ValueError(f"the saved optimizer state is for {sorted(by_name)}, this run uses {sorted(self.parts)}")
        for name, opt in self.parts.items():
            opt.load_state_dict(by_name[name])


def make_optimizer(model: torch.nn.Module, cfg, device: torch.device, dtype: torch.dtype = torch.float32) -> Optimizers:
    """The optimizer named by cfg.train.optimizer for model's trainable parameters. dtype: the run's compute
    dtype (lm.device.choose_dtype); Muon orthogonalises in bfloat16 only when it is bfloat16."""
    t = cfg.train
    if t.optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {t.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}")
    params = [p for p in model.parameters() if p.requires_grad]
    matrices = muon_parameters(model) if t.optimizer == "muon" else []
    taken = {id(p) for p in matrices}
    rest = [p for p in params if id(p) not in taken]
    groups = [{"params": [p for p in rest if p.dim() >= 2], "weight_decay": t.weight_decay},
              {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}]
    parts = {"adamw": torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), fused=device.type == "cuda")}
    if matrices:
        ns_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float32
        parts["muon"] = Muon(matrices, lr=t.muon_lr, weight_decay=t.weight_decay, ns_dtype=ns_dtype)
    return Optimizers(parts)
