"""Sampling speed with and without the KV cache, side by side in one process.

    python bench/sample_speed.py [--checkpoint out/shakespeare_char/best.pt] [--tokens 256] [--repeats 3]
                                 [--temperature 0] [--prompt_len 1] [--block_size=256 ...config overrides]

Without a checkpoint, a randomly initialised model of the shipped config.yaml's shape (with any
config overrides) is used; speed does not depend on the weights. Prints tokens/s for each mode, their
ratio, the time to the first token and the peak RSS; both modes produce the same tokens (checked here
too; temperature 0, greedy, by default).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm import config  # noqa: E402
from lm.checkpoint import load_model  # noqa: E402
from lm.generate import generate  # noqa: E402
from lm.nn import GPT  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--tokens", type=int, default=256, help="new tokens per sample")
    p.add_argument("--repeats", type=int, default=3, help="alternating timed runs per mode (best is kept)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--prompt_len", type=int, default=1, help="prompt tokens")
    args, overrides = p.parse_known_args()
    if args.checkpoint:
        model, _, cfg = load_model(args.checkpoint)
    else:
        cfg = config.load(Path(__file__).resolve().parents[1] / "config.yaml", overrides)
        cfg.model.vocab_size = 65
        torch.manual_seed(0)
        model = GPT(cfg.model).eval()
    prompt = torch.randint(cfg.model.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    best = {True: float("inf"), False: float("inf")}
    first = {True: float("inf"), False: float("inf")}
    outputs = {}
    for _ in range(args.repeats):
        for use_cache in (True, False):  # alternate so that machine noise hits both alike
            g = torch.Generator().manual_seed(0)
            t0 = time.perf_counter()
            tokens = []
            for token in generate(model, prompt, args.tokens, args.temperature, generator=g, use_cache=use_cache):
                if not tokens:
                    first[use_cache] = min(first[use_cache], time.perf_counter() - t0)
                tokens.append(token)
            best[use_cache] = min(best[use_cache], time.perf_counter() - t0)
            outputs[use_cache] = torch.cat(tokens, 1)
    assert torch.equal(outputs[True], outputs[False]), "cached and uncached samples differ"
    c = cfg.model
    print(f"model: {c.num_blocks} blocks x {c.embedding_dim} wide, block_size {c.block_size}; "
          f"{args.tokens} new tokens from a {args.prompt_len}-token prompt, temperature {args.temperature}, best of "
          f"{args.repeats}; torch threads {torch.get_num_threads()}")
    for use_cache in (True, False):
        print(f"  {'with KV cache   ' if use_cache else 'without KV cache'}: {args.tokens / best[use_cache]:8.0f} "
              f"tokens/s, first token after {first[use_cache] * 1e3:.1f} ms")
    print(f"  speed-up: {best[False] / best[True]:.2f}x (identical tokens)")
    print(f"  peak RSS: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
