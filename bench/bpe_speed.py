"""How fast a byte-level BPE is learned (lm.data.bpe.train_bpe) and applied (tiktoken), on one corpus.

    python bench/bpe_speed.py [--data_path PATH] [--chars 1000000] [--vocab_size 1024] [--repeats 3]

Learns vocab_size tokens from the corpus's first --chars characters (best of --repeats), then encodes the
whole corpus with the learned merges and checks that decoding gives the text back. Data: Tiny Shakespeare
from ../shared when present, else the offline corpus (Python's documentation). Prints the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from lm.data.bpe import BpeTokenizer, train_bpe  # noqa: E402

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", default=None)
    p.add_argument("--chars", type=int, default=1_000_000)
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.data_path:
        name, text = args.data_path, Path(args.data_path).read_text(encoding="utf-8")
    elif SHAKESPEARE.is_file():
        name, text = str(SHAKESPEARE), SHAKESPEARE.read_text(encoding="utf-8")
    else:
        from lm.data.corpus import _offline_text

        name, text = "the offline corpus (Python's documentation)", _offline_text()
    sample = text[: args.chars]
    print(f"machine: {describe()}\ncorpus: {name}, {len(text):,} characters; learning from the first "
          f"{len(sample):,} ({len(sample.encode('utf-8')):,} bytes)")
    best = float("inf")
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        merges = train_bpe(sample, args.vocab_size)
        best = min(best, time.perf_counter() - t0)
    tok = BpeTokenizer(merges)
    t0 = time.perf_counter()
    ids = tok.encode(text)
    encode_s = time.perf_counter() - t0
    assert tok.decode(ids) == text, "decoding did not give the text back"
    print(f"learned {tok.vocab_size} tokens in {best:.2f} s (best of {args.repeats}); encoded the whole corpus in "
          f"{encode_s:.3f} s: {len(ids):,} tokens, {len(text) / len(ids):.2f} characters per token; round trip exact")


if __name__ == "__main__":
    main()
