"""Data parallelism across processes started by ``torchrun`` (torch.distributed).

``torchrun --nproc_per_node=N train.py ...`` starts N copies of the program with RANK, WORLD_SIZE,
LOCAL_RANK and a rendezvous address in their environment; ``World.from_environment`` joins them into
one process group (gloo on the CPU, NCCL on CUDA). A single process (no torchrun) is a world of one,
and every method below is then a no-op, so the training loop reads the same either way.

How the work is shared (lm.trainer): every optimizer step takes grad_accum micro-batches, numbered
step * grad_accum + j as in a single process; rank r takes those with j = r, r + N, r + 2N, ... and
DistributedDataParallel averages the gradients once per step, so N processes compute the same step as
one, whatever N (exactly so with dropout 0: every process draws its dropout masks from the same seed).
"""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

# how long a collective waits for a process that does not answer before it fails: a hung peer ends the
# job instead of hanging it (a dead one is noticed at once: its connections close). Long enough for the
# main process to write a large checkpoint while the others wait; while it prepares a corpus, it sends
# heartbeats (lm.trainer._prepare_data), so that may take longer.
TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class World:
    rank: int = 0  # this process's number, 0 .. size - 1
    size: int = 1  # number of processes
    local_rank: int = 0  # its number on this machine (selects cuda:local_rank)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that reports progress and writes the run's files."""
        return self.rank == 0

    @staticmethod
    def size_in_environment() -> int:
        """The number of processes torchrun started (WORLD_SIZE), 1 without torchrun."""
        return int(os.environ.get("WORLD_SIZE", "1"))

    @classmethod
    def from_environment(cls, device_type: str) -> "World":
        """The world torchrun describes in the environment (WORLD_SIZE > 1), joined; else a world of one."""
        size = cls.size_in_environment()
        if size == 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            # CUDA: NCCL for the gradients, gloo for the small host-side sums (World.sum on CPU tensors)
            backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
            if device_type == "cuda":
                if local_rank >= torch.cuda.device_count():
                    raise RuntimeError(f"process {rank} (local rank {local_rank}) has no GPU of its own: this "
                                       f"machine has {torch.cuda.device_count()}; use --nproc_per_node <= that")
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend, timeout=TIMEOUT)
        return cls(rank, size, local_rank)

    def sum(self, values: list[float], device: torch.device | str = "cpu") -> list[float]:
        """Each value summed over every process (float64; one collective)."""
        if self.size == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def any(self, flag: bool, device: torch.device | str = "cpu") -> bool:
        """True on every process when flag is True on at least one."""
        return self.sum([1.0 if flag else 0.0], device)[0] > 0

    def close(self, together: bool = True) -> None:
        """Leave the process group. together: every process gets here (the run ended, or stopped on
        request), so they first wait for each other (the main one may still be writing files); a process
        that leaves with an error just leaves."""
        if self.size > 1 and dist.is_initialized():
            # free what still refers to the group (DistributedDataParallel's reducer sits in reference
            # cycles) while it exists: freed later, at interpreter exit, it made gloo abort the process
            gc.collect()
            if together:
                dist.barrier()
            dist.destroy_process_group()
