"""What logger: tensorboard costs: whole training runs of the shipped config.yaml with logger none and
logger tensorboard, alternating in one process (so machine noise hits both alike), through the real
lm.trainer.train.

    python bench/logger_overhead.py [--rounds 3] [--config config.yaml] [extra --key=value overrides]

Per run: the training time (elapsed_s: the steps only, evaluation excluded), the wall time of the whole
run (data, steps, evaluations with their examples and images, checkpoints, the final evaluation) and the
mean tokens/s of the metrics lines. Reports the median of each per logger and the ratio tensorboard / none.
Prints the machine (CPU model, flags, cores). Data: config.yaml's data_path (Tiny Shakespeare when it is in
data/tinyshakespeare/), else the offline corpus.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from lm.config import load  # noqa: E402
from lm.trainer import train  # noqa: E402

LOGGERS = ("none", "tensorboard")


def one_run(config: str, logger: str, out_dir: Path, extra: list[str]) -> dict:
    cfg = load(ROOT / config, [f"--out_dir={out_dir}", f"--logger={logger}", *extra])
    t0 = time.perf_counter()
    train(cfg, overwrite=True)
    wall = time.perf_counter() - t0
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "tokens_per_sec" in r]
    return {"train_s": records[-1]["elapsed_s"], "wall_s": wall,
            "tokens_per_sec": statistics.mean(r["tokens_per_sec"] for r in steps)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--config", default="config.yaml")
    args, extra = p.parse_known_args()
    print(describe())
    print(f"config {args.config} {' '.join(extra)}; {args.rounds} rounds, loggers alternating: {', '.join(LOGGERS)}")
    results: dict[str, list[dict]] = {name: [] for name in LOGGERS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            order = LOGGERS if r % 2 == 0 else LOGGERS[::-1]
            for logger in order:
                got = one_run(args.config, logger, Path(tmp) / logger, extra)
                results[logger].append(got)
                print(f"round {r + 1} {logger:>11}: training {got['train_s']:.1f} s, whole run {got['wall_s']:.1f} s, "
                      f"{got['tokens_per_sec']:,.0f} tok/s", flush=True)
    med = {name: {k: statistics.median(run[k] for run in runs) for k in runs[0]} for name, runs in results.items()}
    print("\n| logger | training (s) | whole run (s) | tokens/s |\n|---|---|---|---|")
    for name in LOGGERS:
        m = med[name]
        print(f"| {name} | {m['train_s']:.1f} | {m['wall_s']:.1f} | {m['tokens_per_sec']:,.0f} |")
    a, b = med["none"], med["tensorboard"]
    print(f"\ntensorboard / none (medians): training time {b['train_s'] / a['train_s']:.3f}x, whole run "
          f"{b['wall_s'] / a['wall_s']:.3f}x, tokens/s {b['tokens_per_sec'] / a['tokens_per_sec']:.3f}x")


if __name__ == "__main__":
    main()
