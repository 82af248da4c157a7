"""Sampling speed with and without the KV cache, side by side in one process.

    python bench/sample_speed.py [--checkpoint out/shakespeare_char/best.pt] [--tokens 256] [--num_samples 8]
                                 [--repeats 3] [--temperature 0] [--prompt_len 1] [--block_size=256 ...overrides]

The target case: python bench/sample_speed.py --block_size=256 --tokens 255 --num_samples 8

It times lm.generate.generate, the code path sample.py runs: --num_samples rows generated as one batch
(with temperature > 0 each row draws from its own generator, as sample.py's samples do). Without a
checkpoint, a randomly initialised model of the shipped config.yaml's shape (with any config overrides)
is used; speed does not depend on the weights. Prints, for each mode, tokens/s counting every row, the
time per token step (one step makes a token for each row), the time to the first step, the model's
FLOPs per token (GPT.flops_per_token) beside them, the cached / uncached ratio, the peak RSS and the
machine. Both modes must produce the same tokens (checked; temperature 0, greedy, by default).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.machine import describe  # noqa: E402
from lm import config  # noqa: E402
from lm.checkpoint import load_model  # noqa: E402
from lm.generate import generate  # noqa: E402
from lm.nn import GPT  # noqa: E402


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--tokens", type=int, default=256, help="new tokens per sample")
    p.add_argument("--num_samples", type=int, default=8, help="samples (rows) generated as one batch")
    p.add_argument("--repeats", type=int, default=3, help="alternating timed runs per mode (best is kept)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--prompt_len", type=int, default=1, help="prompt tokens")
    return p.parse_known_args()


def build_model(args, overrides):
    if args.checkpoint:
        model, _, cfg = load_model(args.checkpoint)
        return model, cfg
    cfg = config.load(Path(__file__).resolve().parents[1] / "config.yaml", overrides)
    cfg.model.vocab_size = 65
    torch.manual_seed(0)
    return GPT(cfg.model).eval(), cfg


def timed_run(model, prompt, args, use_cache):
    """One full generate(): (seconds in all, seconds to the first step, tokens (N, tokens))."""
    generators = [torch.Generator().manual_seed(i) for i in range(prompt.size(0))]  # as sample.py seeds its rows
    t0 = time.perf_counter()
    first, steps = None, []
    for token in generate(model, prompt, args.tokens, args.temperature, generator=generators, use_cache=use_cache):
        if first is None:
            first = time.perf_counter() - t0
        steps.append(token)
    return time.perf_counter() - t0, first, torch.cat(steps, dim=1)


def main() -> None:
    args, overrides = parse_args()
    model, cfg = build_model(args, overrides)
    n = args.num_samples
    prompt = torch.randint(cfg.model.vocab_size, (n, args.prompt_len), generator=torch.Generator().manual_seed(1))
    best = {True: float("inf"), False: float("inf")}
    first = {True: float("inf"), False: float("inf")}
    outputs = {}
    for _ in range(args.repeats):
        for use_cache in (True, False):  # alternate so that machine noise hits both alike
            seconds, to_first, outputs[use_cache] = timed_run(model, prompt, args, use_cache)
            best[use_cache] = min(best[use_cache], seconds)
            first[use_cache] = min(first[use_cache], to_first)
    assert torch.equal(outputs[True], outputs[False]), "cached and uncached samples differ"
    c = cfg.model
    print(f"model: {c.num_blocks} blocks x {c.embedding_dim} wide, {c.num_heads} heads, block_size {c.block_size}; "
          f"{model.flops_per_token() / 1e6:.2f} MFLOPs per token\n       (GPT.flops_per_token: training, forward + "
          f"backward, with a block_size context; a forward pass is about a third)")
    print(f"{n} samples x {args.tokens} new tokens from a {args.prompt_len}-token prompt, one batch, temperature "
          f"{args.temperature}, best of {args.repeats}; torch threads {torch.get_num_threads()}")
    for use_cache in (True, False):
        print(f"  {'with KV cache   ' if use_cache else 'without KV cache'}: {n * args.tokens / best[use_cache]:8.0f} "
              f"tokens/s (all rows), {best[use_cache] / args.tokens * 1e3:6.2f} ms per token step, "
              f"first step after {first[use_cache] * 1e3:.1f} ms")
    print(f"  cached / uncached: {best[False] / best[True]:.2f}x (identical tokens, checked)")
    print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    print(f"  machine: {describe()}")


if __name__ == "__main__":
    main()
