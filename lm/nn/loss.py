"""The training objective: cross-entropy over target tokens, with padding ignored and optional label
smoothing. The jobs (lm.jobs) compute it from the models' logits."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def token_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = -100,
               label_smoothing: float = 0.0, no_smooth_ids: Sequence[int] = ()) -> torch.Tensor:
    """Mean cross-entropy over the target tokens that are not ignore_index (e.g. padding).

    logits: (..., V), targets: (...). With label smoothing eps, each token's loss is the
    cross-entropy against (1 - eps) on the target plus eps spread uniformly over the valid
    output classes, those not in no_smooth_ids (e.g. PAD and BOS, never a right output):

        loss = (1 - eps) * (-log p_y) + eps * mean_{c in valid} (-log p_c)

    With no_smooth_ids empty every class is valid, and the result is exactly
    F.cross_entropy(..., label_smoothing=eps).
    """
    V = logits.size(-1)
    logits, targets = logits.reshape(-1, V).float(), targets.reshape(-1)  # (N, V), (N,)
    if not no_smooth_ids or label_smoothing == 0.0:
        return F.cross_entropy(logits, targets, ignore_index=ignore_index, label_smoothing=label_smoothing)
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing {label_smoothing} is not allowed; it must be in [0, 1]")
    bad = sorted({int(i) for i in no_smooth_ids if not 0 <= i < V})
    if bad:
        raise ValueError(f"no_smooth_ids {bad} are not classes; they must be in 0..{V - 1}")
    valid = torch.ones(V, dtype=torch.bool, device=logits.device)
    valid[list(no_smooth_ids)] = False
    if not valid.any():
        raise ValueError(f"no_smooth_ids {sorted(no_smooth_ids)} exclude every class; nothing is left to smooth onto")
    real = targets != ignore_index  # (N,)
    logp = F.log_softmax(logits[real], dim=-1)  # (n, V)
    nll = -logp.gather(-1, targets[real][:, None])[:, 0]  # (n,)
    smooth = -logp[:, valid].mean(dim=-1)  # (n,)
    return ((1.0 - label_smoothing) * nll + label_smoothing * smooth).mean()
