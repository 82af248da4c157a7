"""Where each token of a seq2seq example sits: the positions a job gives the encoder and decoder.

The model's ``pos_encoding`` decides the kind of position (lm.nn.position):

    learned, sinusoidal, rope, none   consecutive: source 0..S-1, decoder inputs 0..T-1 (the
                                      model's default; nothing is passed)
    learned_2d, sinusoidal_2d, rope_2d
                                      (row, column): of each source cell (a separator ends its row at
                                      column W), and for decoder input j, of the output cell j it
                                      predicts (task.target_coords: the output shape follows from the
                                      input's shape and the operation)
    randomized                        one sorted set of k positions out of 0..block_size-1 per example,
                                      shared by source and target: source token j gets (p_j, p_{S-1-j})
                                      (from the start, from the end), decoder input j gets p_j. In
                                      training the set is a random subset; in evaluation and sampling
                                      it is spread evenly, p_j = round(j (block_size - 1) / (k - 1)).

k = max(S, task.target_slots(source)): the slots the longer side needs, computed from the source
alone, so positions at inference are defined for every task before anything is decoded. With a
shared set, target token j and source token j (copy) have the same start position, and target
token j and source token S-1-j (reverse) have equal start and end positions.
"""

from __future__ import annotations

import torch

from ..config import GRID_ENCODINGS as GRID
from .tasks import NUM_SPECIALS, Task


def explicit(pos_encoding: str) -> bool:
    """Whether this encoding needs positions from the task (False: the model's consecutive default)."""
    return pos_encoding in GRID or pos_encoding == "randomized"


def _symbols(ids: list[int]) -> list[int]:
    return [i - NUM_SPECIALS for i in ids]


def _spread(k: int, block_size: int, g: torch.Generator | None) -> torch.Tensor:
    """k sorted distinct positions in 0..block_size-1: random (g given) or evenly spread (g None)."""
    if k > block_size:
        raise ValueError(f"an example needs {k} positions and block_size is {block_size}: raise block_size")
    if g is not None:
        return torch.randperm(block_size, generator=g)[:k].sort().values
    if k == 1:
        return torch.zeros(1, dtype=torch.long)
    return torch.linspace(0, block_size - 1, k).round().long()


def positions(task: Task, pos_encoding: str, sources: list[list[int]], block_size: int,
              g: torch.Generator | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Positions of a batch: sources are token-id lists (no specials). Returns (src_pos, tgt_pos):
    (B, S, 2) and (B, L, 2) with S the longest source and L the most decoder inputs any example may
    need (task.target_slots), padded past each example's own; (None, None) for consecutive positions.
    g: the generator of random positions in training; None for evaluation's evenly spread ones.
    """
    if not explicit(pos_encoding):
        return None, None
    symbols = [_symbols(s) for s in sources]
    slots = [task.target_slots(s) for s in symbols]
    S, L = max(len(s) for s in symbols), max(slots)
    src_pos = torch.zeros(len(symbols), S, 2, dtype=torch.long)  # (B, S, 2)
    tgt_pos = torch.zeros(len(symbols), L, 2, dtype=torch.long)  # (B, L, 2)
    for i, (src, n) in enumerate(zip(symbols, slots)):
        if pos_encoding in GRID:
            src_pos[i, : len(src)] = torch.tensor(task.source_coords(src))
            tgt_pos[i, :n] = torch.tensor(task.target_coords(src))
            tgt_pos[i, n:] = tgt_pos[i, n - 1]  # past the last slot: repeat it (those outputs are past EOS)
        else:
            p = _spread(max(len(src), n), block_size, g)  # (k,)
            s = len(src)
            src_pos[i, :s, 0], src_pos[i, :s, 1] = p[:s], p[:s].flip(0)  # from the start, from the end
            tgt_pos[i, :n, 0], tgt_pos[i, n:, 0] = p[:n], p[n - 1]
            tgt_pos[i, :, 1] = -1  # the decoder has no end channel
    return src_pos, tgt_pos
