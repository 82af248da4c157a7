"""Optimizers by name (``optimizer``): adamw | muon.

    adamw  AdamW on every parameter; weight decay on matrices (dim >= 2) only, not on biases, norms or
           other vectors.
    muon   Muon (torch.optim.Muon: momentum, then the update orthogonalised by Newton-Schulz
           iterations) on the hidden weight matrices, those of the blocks' linear layers, at muon_lr;
           AdamW as above on everything else: embeddings, position tables, the output head, norms
           and biases (as in the modded-nanoGPT speedrun records).

Both are driven as one (Optimizers): one step, one zero_grad, one state dict, and one schedule that
scales every group's peak learning rate (lr for AdamW, muon_lr for Muon) by the same factor.
"""

from __future__ import annotations

import torch

from .config import OPTIMIZERS


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


def make_optimizer(model: torch.nn.Module, cfg, device: torch.device) -> Optimizers:
    """The optimizer named by cfg.train.optimizer for model's trainable parameters."""
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
        parts["muon"] = torch.optim.Muon(matrices, lr=t.muon_lr, weight_decay=t.weight_decay)
    return Optimizers(parts)
