"""Training throughput of the real training step (lm.trainer.train_step), each option against the plain
path, alternating in one process; and the machine's measured float32 and bfloat16 matmul peak.

    python bench/train_throughput.py [--sizes small,shipped,large] [--rounds 3] [--steps 5]
                                     [--variants plain,bf16,muon,rmsnorm,relu2,qk_norm]

Sizes (blocks/heads/width, block_size, batch):
    small    4/4/128,  block 64,  batch 12   (nanoGPT's CPU recipe, configs/baseline_nanogpt_cpu.yaml)
    shipped  the shipped config.yaml's shape and batch
    large    6/6/384,  block 256, batch 64
    ten      6/6/192,  block 128, batch 32   (configs/shakespeare_char_10min.yaml's shape, without its dropout)
Variants: plain (float32, AdamW, LayerNorm, GELU: the baseline's path) and one change each: bf16 (bfloat16
autocast; its attention core in float32, lm.nn.attention.sdpa), bf16_core (bf16 with the attention core in
bfloat16 too), muon (optimizer: muon), rmsnorm, relu2, qk_norm, zero_init (start with untied zero head), compile
(torch.compile; its compile time falls in the untimed warm-up step), bf16_compile (both), and best (the
shipped config.yaml's own settings at this size). Every variant of a size is timed in every
round, in turn, so machine noise hits all alike; the median seconds per step is reported with tokens/s,
achieved GFLOP/s (model FLOPs per token x tokens / s, lm.nn.GPT.flops_per_token) and the ratio to plain.
Data: Tiny Shakespeare from ../shared when present, else the offline corpus. Prints the machine (CPU model,
flags, cores) and peak RSS.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from lm.config import load  # noqa: E402
from lm.trainer import Run, prepare_job, train_step  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"
SIZES = {
    "small": ["--num_blocks=4", "--num_heads=4", "--embedding_dim=128", "--block_size=64", "--batch_size=12"],
    "shipped": [],
    "large": ["--num_blocks=6", "--num_heads=6", "--embedding_dim=384", "--block_size=256", "--batch_size=64"],
    "ten": ["--num_blocks=6", "--num_heads=6", "--embedding_dim=192", "--block_size=128", "--batch_size=32"],
}
PLAIN = ["--dtype=float32", "--optimizer=adamw", "--norm=layernorm", "--activation=gelu", "--qk_norm=false",
         "--tie_head=true", "--zero_init=false", "--bias=false", "--dropout=0.0"]
VARIANTS = {
    "plain": [],
    "bf16": ["--dtype=bfloat16"],
    "muon": ["--optimizer=muon"],
    "rmsnorm": ["--norm=rmsnorm"],
    "relu2": ["--activation=relu2"],
    "qk_norm": ["--qk_norm=true"],
    "zero_init": ["--tie_head=false", "--zero_init=true"],
    "bf16_core": ["--dtype=bfloat16"],  # and the attention core in bfloat16 too (see build)
    "compile": ["--compile=true"],
    "bf16_compile": ["--dtype=bfloat16", "--compile=true"],
}


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of an n x n by n x n matmul in dtype, best of repeats."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def build(size: str, variant: str, corpus: Path, out: Path):
    overrides = [f"--data_path={corpus}", f"--out_dir={out}", "--device=cpu", *SIZES[size]]
    if variant != "best":
        overrides += PLAIN + VARIANTS[variant]
    cfg = load(ROOT / "config.yaml", overrides)
    job = prepare_job(cfg, None, out, lambda e: None)
    run = Run(cfg, job, "bench", out)
    if variant == "bf16_core":  # what bf16 autocast did before lm.nn.attention.sdpa kept the core in float32
        for module in run.model.modules():
            if hasattr(module, "float32_on_cpu"):
                module.float32_on_cpu = False
    run.model.train()
    return run, job.batches(start=0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="small,shipped,large")
    p.add_argument("--variants", default="plain,bf16,muon,rmsnorm,relu2,qk_norm,zero_init,best")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
    args = p.parse_args()
    corpus = SHAKESPEARE
    if not corpus.is_file():
        from lm.data.corpus import _offline_text

        corpus = Path(tempfile.mkdtemp()) / "offline.txt"
        corpus.write_text(_offline_text(), encoding="utf-8")
    print(f"machine: {describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads")
    f32, bf16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"matmul peak (1024^3, best of 10): float32 {f32:.0f} GFLOP/s, bfloat16 {bf16:.0f} GFLOP/s "
          f"({bf16 / f32:.2f}x)\n", flush=True)
    variants = args.variants.split(",")
    for size in args.sizes.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            runs = {v: build(size, v, corpus, Path(tmp) / v) for v in variants}
            times = {v: [] for v in variants}
            for run, batches in runs.values():
                train_step(run, batches, run.cfg.train.lr)  # warm-up
            for _ in range(args.rounds):
                for v, (run, batches) in runs.items():
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        train_step(run, batches, run.cfg.train.lr)
                    times[v].append((time.perf_counter() - t0) / args.steps)
            first = runs[variants[0]][0]
            c, t = first.cfg.model, first.cfg.train
            print(f"## {size}: {c.num_blocks}/{c.num_heads}/{c.embedding_dim}, block {c.block_size}, batch "
                  f"{t.batch_size}; {args.rounds} rounds x {args.steps} steps\n")
            print("| variant | s/step (median; range) | tokens/s | GFLOP/s | vs plain |\n|---|---|---|---|---|")
            plain = statistics.median(times["plain"]) if "plain" in times else None
            for v, (run, _) in runs.items():
                s = statistics.median(times[v])
                tokens = run.cfg.train.batch_size * run.cfg.model.block_size
                flops = run.model.flops_per_token() * tokens / s / 1e9
                ratio = f"{plain / s:.2f}x" if plain else "-"
                print(f"| {v} ({run.dtype}) | {s:.4f} ({min(times[v]):.4f}-{max(times[v]):.4f}) | {tokens / s:,.0f} | "
                      f"{flops:.1f} | {ratio} |", flush=True)
            print()
    print(f"peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
