"""The attention core under bfloat16 autocast on the CPU: float32 or bfloat16, forward and backward.

    python bench/attention_core.py [--repeats 5]

Times the real lm.nn.attention.sdpa (causal, no dropout) forward and backward under torch.autocast("cpu",
bfloat16) at several key lengths T and head sizes d: with float32_on_cpu=True (the float32 core; the
threshold FLOAT32_CORE_BELOW is lifted for the measurement) and with float32_on_cpu=False (the bfloat16
kernel), alternating, best of --repeats. The batch is sized so that every shape does about the same work.
A ratio bf16 / f32 above 1 means the bfloat16 kernel is slower; the last column is what sdpa picks.
Prints the machine (CPU model, flags, cores) and the threshold in use.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from lm.nn import attention  # noqa: E402

HEADS = 4


def timed(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    threshold = attention.FLOAT32_CORE_BELOW
    attention.FLOAT32_CORE_BELOW = float("inf")  # float32_on_cpu alone decides, at every shape
    print(f"machine: {describe()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"sdpa uses the float32 core where T x d < {threshold}\n")
    print("| T | d | batch | float32 core (ms) | bfloat16 core (ms) | bf16 / f32 | sdpa picks |\n|---|---|---|---|---|---|---|")
    g = torch.Generator().manual_seed(0)
    for t in (64, 128, 256):
        for d in (32, 64, 128):
            batch = max(1, min(64, 64 * 64 * 256 // (t * t * d)))
            q, k, v = (torch.randn(batch, HEADS, t, d, generator=g).bfloat16().requires_grad_() for _ in range(3))
            grad = torch.randn(batch, HEADS, t, d, generator=g).bfloat16()
            best = {}
            for _ in range(args.repeats):
                for float32 in (True, False):  # alternate: noise hits both alike
                    def step():
                        with torch.autocast("cpu", dtype=torch.bfloat16):
                            y = attention.sdpa(q, k, v, None, True, 0.0, float32_on_cpu=float32)
                        y.backward(grad)

                    best[float32] = min(best.get(float32, float("inf")), timed(step, 1))
            picks = "float32" if t * d < threshold else "bfloat16"
            print(f"| {t} | {d} | {batch} | {best[True] * 1e3:.2f} | {best[False] * 1e3:.2f} | "
                  f"{best[False] / best[True]:.2f} | {picks} |", flush=True)


if __name__ == "__main__":
    main()
