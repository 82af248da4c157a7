"""Exact match of a seq2seq checkpoint on held-out sets of chosen lengths, e.g. longer than trained.

    python bench/length_generalisation.py --checkpoint out/copy_extrapolate/best.pt \
        --lengths 1-16 17-24 25-32 [--size 1000] [--seed N]

Each range gets a fresh held-out set (`--size` examples, lengths uniform in the range, drawn with
the checkpoint's seed unless --seed is given) scored exactly as training scores its held-out sets
(greedy decoding, evaluation positions of lm.data.layout). Lengths must fit the model's block_size.
Prints one line per range: exact match and token accuracy. Not for task add, whose layout
depends on the longest length the model was built for.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lm.checkpoint import load_model  # noqa: E402
from lm.config import ConfigError, validate  # noqa: E402
from lm.data.windows import seeded_generator  # noqa: E402
from lm.jobs import HELD_OUT_STREAM, Seq2SeqJob  # noqa: E402


def length_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    try:
        lo, hi = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a length range like 17-24") from None
    if not 1 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"{text!r}: lengths must satisfy 1 <= low <= high")
    return lo, hi


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--lengths", type=length_range, nargs="+", required=True, help="ranges like 1-16 17-24")
    p.add_argument("--size", type=int, default=1000, help="examples per range")
    p.add_argument("--seed", type=int, default=None, help="seed of the held-out sets (default: the checkpoint's)")
    args = p.parse_args()
    model, task, cfg = load_model(args.checkpoint)
    if cfg.data.task in ("lm", "add"):
        print(f"error: task {cfg.data.task!r} is not supported here (copy, reverse, sort and grid are)", file=sys.stderr)
        return 2
    for lo, hi in args.lengths:
        c = copy.deepcopy(cfg)
        c.data.min_len, c.data.max_len, c.data.eval_long_len, c.data.held_out_size = lo, hi, hi, args.size
        try:
            validate(c)
            job = Seq2SeqJob(c, None, None, lambda event: None)  # checks that the lengths fit block_size
        except ConfigError as e:
            print(f"error: lengths {lo}-{hi}: {e}", file=sys.stderr)
            return 2
        seed = cfg.train.seed if args.seed is None else args.seed
        pairs = task.examples(args.size, lo, hi, seeded_generator(seed, HELD_OUT_STREAM, lo, hi))
        scores = job.score(model, pairs, torch.device("cpu"), torch.float32)
        print(f"lengths {lo}-{hi}: exact match {100 * scores['exact']:.1f}%, token accuracy "
              f"{100 * scores['token_acc']:.1f}% ({args.size} examples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
