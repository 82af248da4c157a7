"""AdamW against Muon on the seq2seq task configs: training time to an exact-match target, and each whole run.

    python bench/seq2seq_optimizer.py [configs/copy.yaml configs/reverse.yaml ...] [--target 0.99]
                                      [--optimizers adamw,muon] [--stop] [-- --seed=1 ...overrides for all]

Each (config, optimizer) runs the real trainer (lm.trainer.train) to its end in a process of its own, one at
a time, with the config's own seed and evaluation schedule; only the optimizer differs. Reported per run:
the first evaluation whose held-out exact match (val_exact) reached --target (its step and training time,
evaluation excluded), and the final held-out numbers (final_val_exact, final_val_token_acc, final_long_exact,
final_long_token_acc) with the whole run's training time; with --stop each run ends at the target instead
(the final numbers are then those of that step). Without configs: every seq2seq config in configs/.
Prints the machine (CPU model, flags, cores) and a table per config.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

TASK_CONFIGS = ["copy", "reverse", "sort", "add", "grid", "copy_extrapolate", "reverse_extrapolate"]


def worker(config: str, optimizer: str, target: float, overrides: list[str], stop: bool = False) -> dict:
    """One whole run in this process (with stop, until the target); the first evaluation at or above target
    is noted."""
    from lm import trainer
    from lm.config import load

    reached: dict = {}

    def on_event(e):
        if e["event"] == "eval" and not reached and e.get("val_exact", 0.0) >= target:
            reached.update(step=e["step"], elapsed_s=e["elapsed_s"], val_exact=e["val_exact"])

    with tempfile.TemporaryDirectory() as out:
        cfg = load(ROOT / config, [f"--out_dir={out}", f"--optimizer={optimizer}", *overrides])
        try:
            summary = trainer.train(cfg, on_event=on_event, should_stop=lambda: stop and bool(reached))
        except trainer.Interrupted:  # stopped at the target: no final evaluation
            summary = {"total_steps": reached["step"], "elapsed_s": reached["elapsed_s"],
                       "final_val_exact": reached["val_exact"]}
    keys = ("final_val_exact", "final_val_token_acc", "final_long_exact", "final_long_token_acc", "elapsed_s")
    return {"config": config, "optimizer": optimizer, "dtype": str(cfg.train.dtype), "reached": reached,
            **{k: summary.get(k) for k in keys}, "steps": summary["total_steps"], "stopped": stop and bool(reached)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*")
    p.add_argument("--target", type=float, default=0.99, help="held-out exact match to reach")
    p.add_argument("--optimizers", default="adamw,muon")
    p.add_argument("--stop", action="store_true", help="end each run at the target")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    if args.worker:
        print(json.dumps(worker(args.configs[0], args.worker, args.target, overrides, args.stop)))
        return
    configs = args.configs or [f"configs/{name}.yaml" for name in TASK_CONFIGS]
    print(f"machine: {describe()}; target held-out exact match {args.target}", flush=True)
    for config in configs:
        rows = []
        for optimizer in args.optimizers.split(","):
            done = subprocess.run([sys.executable, __file__, config, f"--worker={optimizer}",
                                   f"--target={args.target}", *(["--stop"] if args.stop else []), *overrides],
                                  capture_output=True, text=True, cwd=ROOT)
            if done.returncode:
                raise SystemExit(f"{config} with {optimizer} failed:\n{done.stderr[-3000:]}")
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"run {json.dumps(result)}", flush=True)
            rows.append(result)
        print(f"\n## {config}\n\n| optimizer | reached {args.target} at step | training time to it (s) | steps | "
              f"training time (s) | held-out exact | token acc. | longer: exact / token acc. |\n"
              f"|---|---|---|---|---|---|---|---|")
        for r in rows:
            hit = r["reached"]
            to = (f"{hit['step']} | {hit['elapsed_s']:.1f}" if hit else "not reached | -")
            if r["stopped"]:
                print(f"| {r['optimizer']} | {to} | {r['steps']} (stopped at the target) | {r['elapsed_s']:.1f} | "
                      f"{100 * r['final_val_exact']:.1f}% | - | - |")
                continue
            long = ("-" if r["final_long_exact"] is None else
                    f"{100 * r['final_long_exact']:.1f}% / {100 * r['final_long_token_acc']:.1f}%")
            print(f"| {r['optimizer']} | {to} | {r['steps']} | {r['elapsed_s']:.1f} | "
                  f"{100 * r['final_val_exact']:.1f}% | {100 * r['final_val_token_acc']:.1f}% | {long} |")
        print(flush=True)


if __name__ == "__main__":
    main()
