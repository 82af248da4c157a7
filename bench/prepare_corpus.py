"""Preparing a large corpus: time and peak memory (RSS) against corpus size.

    python bench/prepare_corpus.py [--sizes_mb 256,1024] [--tokenizer char] [--vocab_size 1024]
                                   [--dir /tmp/lm_bench_corpus]

For each size, a corpus of that many MiB is generated once into --dir (and reused): lines drawn at
random, with a fixed seed, from a base corpus (Tiny Shakespeare from ../shared when present, else the
Python documentation shipped with CPython). Then a fresh process prepares it into an empty cache through
lm.trainer.prepare_job, the function train.py runs before training (scan, tokenizer, encode), and this
process reports that child's wall time, its peak resident memory (ru_maxrss from os.wait4) and the time
of each stage. Bounded memory shows as a peak RSS that does not grow with the size. Prints the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"


def base_lines() -> tuple[str, list[str]]:
    if SHAKESPEARE.is_file():
        return str(SHAKESPEARE), SHAKESPEARE.read_text(encoding="utf-8").splitlines(keepends=True)
    from lm.data.corpus import _offline_text

    return "the offline corpus (Python's documentation)", _offline_text().splitlines(keepends=True)


def generate(path: Path, size: int, lines: list[str], seed: int = 0) -> None:
    """size bytes (about: whole lines) of lines drawn at random from lines."""
    import numpy as np

    if path.exists() and abs(path.stat().st_size - size) < 1 << 20:
        return
    rng = np.random.default_rng(seed)
    tmp = path.with_name(f".{path.name}.tmp")  # hidden: an interrupted write is never part of a corpus
    written = 0
    with open(tmp, "wb") as f:
        while written < size:
            block = "".join(lines[i] for i in rng.integers(len(lines), size=200_000)).encode("utf-8")
            block = block[: size - written]
            block = block[: block.rfind(b"\n") + 1] or block  # whole lines (and whole characters)
            f.write(block)
            written += len(block)
    os.replace(tmp, path)


def child(corpus: str, out_dir: str, tokenizer: str, vocab_size: int) -> None:
    """Runs in a fresh process: prepare the corpus as train.py does, print stage times as JSON."""
    from lm import config
    from lm.trainer import prepare_job

    cfg = config.load(str(ROOT / "config.yaml"), [f"--data_path={corpus}", f"--out_dir={out_dir}",
                                                  f"--tokenizer={tokenizer}"]
                      + ([f"--vocab_size={vocab_size}"] if tokenizer == "bpe" else []))
    import resource

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB: the interpreter, torch and lm
    t0 = time.perf_counter()
    starts = {}

    def emit(event: dict) -> None:
        if event["event"] == "prepare":
            starts.setdefault(event["stage"], time.perf_counter() - t0)

    job = prepare_job(cfg, None, Path(out_dir), emit)
    total = time.perf_counter() - t0
    stages = sorted(starts.items(), key=lambda kv: kv[1]) + [("end", total)]
    times = {name: round(stages[i + 1][1] - at, 2) for i, (name, at) in enumerate(stages[:-1])}
    print(json.dumps({"seconds": round(total, 2), "stages": times, "rss_before_kib": before, "train_tokens": len(job.corpus.train),
                      "val_tokens": len(job.corpus.val), "vocab_size": job.vocab.vocab_size}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes_mb", default="256,1024")
    p.add_argument("--tokenizer", default="char")
    p.add_argument("--vocab_size", type=int, default=1024)
    p.add_argument("--files", type=int, default=1, help="split each corpus into this many files in a directory")
    p.add_argument("--dir", default="/tmp/lm_bench_corpus")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child[0], args.child[1], args.child[2], int(args.child[3]))

    from bench.machine import describe

    name, lines = base_lines()
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {describe()}\nbase corpus: {name}; tokenizer {args.tokenizer}"
          + (f" ({args.vocab_size} tokens)" if args.tokenizer == "bpe" else ""))
    print("| corpus | files | wall time | MiB/s | peak RSS | stages (s) | train / val tokens |")
    print("|---|---|---|---|---|---|---|")
    for mb in (int(s) for s in args.sizes_mb.split(",")):
        if args.files == 1:
            corpus = out / f"corpus_{mb}mb.txt"
            generate(corpus, mb << 20, lines)
            size = corpus.stat().st_size
        else:  # a directory of shards, each drawn with its own seed
            corpus = out / f"corpus_{mb}mb_{args.files}_files"
            corpus.mkdir(exist_ok=True)
            for k in range(args.files):
                generate(corpus / f"shard_{k:05d}.txt", (mb << 20) // args.files, lines, seed=k)
            size = sum(f.stat().st_size for f in corpus.iterdir())
        run_dir = out / f"run_{mb}mb_{args.tokenizer}"
        shutil.rmtree(run_dir, ignore_errors=True)
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(corpus), str(run_dir), args.tokenizer,
                                 str(args.vocab_size)], stdout=subprocess.PIPE, text=True)
        t0 = time.perf_counter()
        output = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"preparing {corpus} failed (exit {os.waitstatus_to_exitcode(status)})")
        result = json.loads(output.strip().splitlines()[-1])
        stages = ", ".join(f"{k} {v}" for k, v in result["stages"].items())
        print(f"| {size / 2**20:,.0f} MiB | {args.files} | {wall:.1f} s | {size / 2**20 / wall:.1f} | "
              f"{usage.ru_maxrss / 1024:,.0f} MiB ({result['rss_before_kib'] / 1024:,.0f} before preparing) | {stages} | {result['train_tokens']:,} / {result['val_tokens']:,} |",
              flush=True)
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
