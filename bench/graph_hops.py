"""Blocks against hops: task graph's distance learned by models of 1..6 blocks (and with shared blocks).

    python bench/graph_hops.py [--blocks 1 2 3 4 5 6] [--shared 6] [--max_iters 2000] [--out out/graph_hops]

Trains configs/graph.yaml once per model through train.py (the real command line), with --num_blocks=L
(and --share_blocks=true for the --shared ones), every other setting as the file has it, each for the same
number of steps; then scores each run's best.pt on its held-out graphs of the trained sizes and on the
larger ones (lm.jobs.GraphJob.score), and prints a markdown table: node accuracy for each true distance
d (capped at max_hops), and whole-graph exact match on both sets. A node at distance d < max_hops can
only be right with at least d blocks: each block moves information one hop along the mask.
Runs one training at a time; accuracies do not depend on the machine's speed (a run is a number of steps).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from lm.checkpoint import load_model  # noqa: E402
from lm.jobs import GraphJob  # noqa: E402


def train(config: str, blocks: int, shared: bool, max_iters: int, out: Path) -> Path:
    run = out / f"blocks_{blocks}{'_shared' if shared else ''}"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", config, f"--num_blocks={blocks}",
           f"--share_blocks={'true' if shared else 'false'}", f"--max_iters={max_iters}", f"--out_dir={run}",
           "--show_examples=0", "--overwrite"]
    print(f"$ {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return run / "best.pt"


def row(checkpoint: Path, label: str) -> tuple[str, list[str]]:
    model, _, cfg = load_model(checkpoint)
    job = GraphJob(cfg, None, checkpoint.parent, lambda event: None)
    cpu = torch.device("cpu")
    held = job.score(model, job.held_out, cpu, torch.float32)
    long = job.score(model, job.long, cpu, torch.float32) if job.long is not None else None
    cells = []
    for d in range(cfg.data.max_hops + 1):
        right, count = held["by_answer"].get(d, (0, 0))
        cells.append(f"{100 * right / count:.1f}" if count else "-")
    cells += [f"{100 * held['exact']:.1f}", f"{100 * long['exact']:.1f}" if long else "-"]
    params = sum(p.numel() for p in model.parameters())
    return f"{label} ({params / 1e3:.0f}k params)", cells


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "graph.yaml"))
    p.add_argument("--blocks", type=int, nargs="+", default=[1, 2, 3, 4, 5, 6])
    p.add_argument("--shared", type=int, nargs="*", default=[6], help="block counts to train with share_blocks too")
    p.add_argument("--max_iters", type=int, default=2000, help="training steps of every run (configs/graph.yaml's own)")
    p.add_argument("--out", default="out/graph_hops", help="parent directory of the runs")
    args = p.parse_args()
    out = Path(args.out)
    rows = []
    for blocks, shared in [(b, False) for b in args.blocks] + [(b, True) for b in args.shared]:
        checkpoint = train(args.config, blocks, shared, args.max_iters, out)
        rows.append(row(checkpoint, f"{blocks} block{'s' if blocks > 1 else ''}{', shared' if shared else ''}"))
    _, _, cfg = load_model(checkpoint)
    hops = cfg.data.max_hops
    d = cfg.data
    print(f"machine: {describe()}")
    print(f"{args.max_iters} steps each; held-out: {d.held_out_size} graphs of {d.min_len}..{d.max_len} nodes, "
          f"larger: {d.max_len + 1}..{d.eval_long_len}\n")
    head = [f"d={i}" for i in range(hops)] + [f"d>={hops}", "exact", f"exact, {d.max_len + 1}..{d.eval_long_len} nodes"]
    print("| model | " + " | ".join(head) + " |")
    print("|---|" + "---:|" * len(head))
    for label, cells in rows:
        print(f"| {label} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
