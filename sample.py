"""Generate text from a checkpoint, streaming it to stdout as it is produced.

    python sample.py --checkpoint out/shakespeare_char/best.pt --prompt "ROMEO:" \
        --max_new_tokens 500 --temperature 0.8 --top_k 40 --top_p 0.95 --num_samples 3 --seed 1

Needs nothing but the checkpoint: the model's config and vocabulary are inside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lm.checkpoint import CheckpointError, load_model
from lm.config import ConfigError
from lm.generate import check_sampling, generate
from lm.tokenizer import UnknownCharactersError
from lm.device import resolve_device

SEPARATOR = "\n" + "-" * 40 + "\n"


def parse_args(argv):
    p = argparse.ArgumentParser(description="Generate text from a trained checkpoint.")
    p.add_argument("--checkpoint", default="out/shakespeare_char/best.pt", help="checkpoint file (default: %(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    src.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 file")
    p.add_argument("--max_new_tokens", type=int, default=500, help="characters to generate per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random")
    p.add_argument("--top_k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top_p", type=float, default=None, help="sample only within the nucleus of mass p, in (0, 1]")
    p.add_argument("--num_samples", type=int, default=1, help="independent samples to generate")
    p.add_argument("--seed", type=int, default=1337, help="random seed")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context for every token")
    return p.parse_args(argv)


def read_prompt(args) -> str:
    if args.prompt_file is not None:
        try:
            return Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read --prompt_file {args.prompt_file!r}: {e}") from None
    return "\n" if args.prompt is None else args.prompt


def main(argv) -> int:
    args = parse_args(argv)
    try:
        if args.num_samples < 1:
            raise ValueError(f"--num_samples {args.num_samples} is not allowed; it must be >= 1")
        check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
        prompt = read_prompt(args)
        if not prompt:
            raise ValueError("the prompt is empty; give at least one character (the default prompt is a newline)")
        device = resolve_device(args.device)
        model, tokenizer, cfg = load_model(args.checkpoint, device)
        try:
            ids = tokenizer.encode(prompt)
        except UnknownCharactersError as e:
            raise ValueError(f"the prompt cannot be encoded: {e}") from None
    except (ValueError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if len(ids) > cfg.model.block_size:
        print(f"note: the prompt has {len(ids)} characters; the model sees only the last "
              f"{cfg.model.block_size} (block_size)", file=sys.stderr)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    idx = torch.tensor(ids, dtype=torch.long, device=device)[None]  # (1, T)
    for n in range(args.num_samples):
        if n:
            sys.stdout.write(SEPARATOR)
        sys.stdout.write(prompt)
        for token in generate(model, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                              generator, use_cache=not args.no_cache):
            sys.stdout.write(tokenizer.decode(token[0].tolist()))
            sys.stdout.flush()
        sys.stdout.write("\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
