"""The shipped config.yaml changed in one setting at a time, trained back to back on one machine.

    python bench/variants.py [--data_path ../shared/data/tinyshakespeare/input.txt] [--out /tmp/variants]
                             [--only pos_encoding=rope ...] [--max_iters 1200]

Runs `train.py --config config.yaml` once as shipped and once per variant below (same seed, same
steps), one process at a time so no two runs share the CPU, and prints a Markdown table: final
validation loss over the whole split, mean training throughput (tokens/s over the run's metrics
lines) and training time, with the CPU model and flags that matter for speed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
VARIANTS = ["pos_encoding=learned", "pos_encoding=sinusoidal", "pos_encoding=rope", "pos_encoding=none",
            "attention=standard", "attention=differential", "norm_placement=pre", "norm_placement=post"]
BASELINE = {"pos_encoding": "learned", "attention": "standard", "norm_placement": "pre"}  # config.yaml's


def run(setting: str, args, out: Path) -> dict:
    key, _, value = setting.partition("=")
    out_dir = out / f"{key}_{value}"
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "config.yaml"), f"--{setting}",
           f"--out_dir={out_dir}", "--overwrite", f"--max_iters={args.max_iters}"]
    if args.data_path:
        cmd.append(f"--data_path={args.data_path}")
    print("$", " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    final = next(x for x in reversed(lines) if x.get("final"))
    speeds = [x["tokens_per_sec"] for x in lines if "tokens_per_sec" in x and not x.get("final")]
    return {"setting": setting, "final_val_loss": final["final_val_loss"], "tokens_per_sec": sum(speeds) / len(speeds),
            "train_s": final["elapsed_s"]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_path", default=None, help="corpus (default: config.yaml's)")
    p.add_argument("--out", default="/tmp/lm_variants", help="parent of the runs' out_dirs")
    p.add_argument("--max_iters", type=int, default=1200)
    p.add_argument("--only", nargs="*", default=None, help="run only these settings, e.g. pos_encoding=rope")
    args = p.parse_args()
    settings = args.only or VARIANTS
    # the baseline settings are one run: config.yaml as shipped
    results, baseline = [], None
    for setting in settings:
        key, _, value = setting.partition("=")
        if BASELINE.get(key) == value and baseline is not None:
            results.append({**baseline, "setting": setting})
            continue
        r = run(setting, args, Path(args.out))
        if BASELINE.get(key) == value:
            baseline = r
        results.append(r)
    base_speed = baseline["tokens_per_sec"] if baseline else None
    print(f"machine: {describe()}; torch threads: default; {args.max_iters} steps each")
    print("| setting | final val loss | tokens/s | vs config.yaml | training time |")
    print("|---|---|---|---|---|")
    for r in results:
        ratio = f"{r['tokens_per_sec'] / base_speed:.2f}x" if base_speed else "-"
        print(f"| `{r['setting']}` | {r['final_val_loss']:.4f} | {r['tokens_per_sec']:,.0f} | {ratio} | {r['train_s']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
