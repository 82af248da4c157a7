"""Token ids (lm.data.corpus's memory-mapped cache) -> random block_size training windows.

Batches are a pure function of (seed, index): batch ``i`` always holds the same
windows, whichever process builds it and whenever. That makes resumed runs replay
exactly the same data order, with or without DataLoader worker processes.
"""

from __future__ import annotations

import hashlib
import itertools
import signal

import numpy as np
import torch


def seeded_generator(*key: int) -> torch.Generator:
    """A random generator determined by a tuple of non-negative ints, e.g. (seed, stream, batch index).

    The tuple is hashed with BLAKE2b into a 63-bit seed: distinct keys give distinct generators
    (up to a 2**-63 chance), the same key gives the same generator in every process, run, and
    version of Python.
    """
    if any(k < 0 for k in key):
        raise ValueError(f"seeded_generator takes non-negative ints, got {key}")
    digest = hashlib.blake2b(b"".join(k.to_bytes(8, "little") for k in key), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF)


def window_batch(ids: np.ndarray, batch_size: int, block_size: int, seed: int, index: int,
                 stream: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch number ``index`` of random windows: inputs x and next-token targets y, both (B, T) int64."""
    g = seeded_generator(seed, stream, index)
    starts = torch.randint(len(ids) - block_size, (batch_size,), generator=g).numpy()
    positions = starts[:, None] + np.arange(block_size + 1)  # (B, T+1)
    xy = torch.from_numpy(np.asarray(ids[positions], dtype=np.int64))  # (B, T+1)
    return xy[:, :-1], xy[:, 1:]


class WindowBatches(torch.utils.data.Dataset):
    """Map-style view: item ``i`` is ``window_batch(..., index=i)``; lets a DataLoader's workers build batches."""

    def __init__(self, ids: np.ndarray, batch_size: int, block_size: int, seed: int, stream: int = 0):
        self.ids, self.batch_size, self.block_size, self.seed, self.stream = ids, batch_size, block_size, seed, stream

    def __len__(self) -> int:
        return 2**62

    def __getitem__(self, index: int):
        return window_batch(self.ids, self.batch_size, self.block_size, self.seed, index, self.stream)


def batch_iterator(ids: np.ndarray, batch_size: int, block_size: int, seed: int, start: int,
                   num_workers: int = 0, stream: int = 0, stride: int = 1):
    """Yield batches start, start + stride, start + 2 * stride, ... forever (stride > 1: one process's
    share of a data-parallel run, see lm.distributed); with num_workers > 0 they are built in worker
    processes."""
    if num_workers == 0:
        for index in itertools.count(start, stride):
            yield window_batch(ids, batch_size, block_size, seed, index, stream)
    dataset = WindowBatches(ids, batch_size, block_size, seed, stream)

    class _From(torch.utils.data.Sampler):
        def __iter__(self):
            return itertools.count(start, stride)

    # The loader's own generator: without it, starting the workers draws from the global RNG and
    # shifts every later dropout mask, so a resumed run would differ from an uninterrupted one.
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, sampler=_From(), num_workers=num_workers,
                                         generator=seeded_generator(seed, stream, start),
                                         worker_init_fn=_ignore_interrupts)
    yield from loader


def _ignore_interrupts(worker_id: int) -> None:
    """In a batch worker: leave Ctrl-C, which a terminal sends to the whole process group, to the training
    process, which checkpoints at the next step boundary and then ends the workers."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def sequential_windows(ids: np.ndarray, block_size: int, batch_size: int):
    """Every token of ``ids`` (but the first) predicted exactly once: consecutive, non-overlapping windows.

    Yields (x, y) batches; the last window may be shorter than block_size and comes in a batch of its own.
    """
    n = len(ids) - 1  # tokens that can be predicted
    full = n // block_size
    for b0 in range(0, full, batch_size):
        rows = [np.asarray(ids[i * block_size : (i + 1) * block_size + 1], dtype=np.int64)
                for i in range(b0, min(b0 + batch_size, full))]
        xy = torch.from_numpy(np.stack(rows))
        yield xy[:, :-1], xy[:, 1:]
    rest = n - full * block_size
    if rest:
        xy = torch.from_numpy(np.asarray(ids[full * block_size :], dtype=np.int64))[None]
        yield xy[:, :-1], xy[:, 1:]
