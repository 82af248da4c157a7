"""Variable-length sequences <-> a padded batch and its mask."""

from __future__ import annotations

import torch


def pad_sequences(seqs: list[list[int]], pad_id: int, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad sequences to one length. Returns ids (B, L) int64 and mask (B, L) bool, True at real tokens."""
    longest = max((len(s) for s in seqs), default=0)
    L = longest if length is None else length
    if L < longest:
        raise ValueError(f"length {L} is shorter than the longest sequence ({longest})")
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), L, dtype=torch.bool)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.as_tensor(s, dtype=torch.long)
        mask[i, : len(s)] = True
    return ids, mask


def unpad(ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
    """Inverse of pad_sequences: the real tokens of each row, as lists."""
    return [row[m].tolist() for row, m in zip(ids, mask)]
