"""Training time (evaluation excluded) until the validation loss first reaches a target, for any configs.

    python bench/time_to_loss.py configs/baseline_nanogpt_cpu.yaml config.yaml --target baseline --eval_every 25
                                 [--target 1.88] [--repeats 2] [--evals 60] [--eval_tokens 65536]
                                 [-- --lr=3e-3 ...overrides for all]

--target baseline: the first config runs to its end first, and its best evaluated validation loss is the
target of the others (and the ratio is against its whole run's training time). --eval_every N evaluates
every N steps in every config (else about --evals evaluations per run).

Each config runs the real trainer (lm.trainer.train) in a process of its own, one at a time, alternating
between the configs when --repeats > 1. The validation loss is estimated every eval_interval steps, chosen
so that a run has about --evals evaluations, on about --eval_tokens tokens whatever the batch size (so
every config's estimate is equally precise). The run stops at the first evaluation at or below the target;
its elapsed_s there (training wall time, evaluations excluded) is the time to the target. Prints one line
per run and a table with medians, the ratio against the first config (an upper bound, "<", against its
whole run's training time where it never reached the target), and each process's peak RSS, plus
the machine (CPU model, flags, cores). Data: the configs' own data_path (Tiny Shakespeare in
data/tinyshakespeare/input.txt for the shipped configs).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402


def worker(config: str, target: float, evals: int, eval_tokens: int, overrides: list[str],
           eval_every: int | None = None) -> dict:
    """One run in this process: stop at the first evaluation at or below target (never, for target -inf:
    the whole run, reporting its best evaluated validation loss)."""
    import torch  # noqa: F401  (imported here: the parent process never computes)

    from lm import trainer
    from lm.config import load

    with tempfile.TemporaryDirectory() as out:
        cfg = load(ROOT / config if not Path(config).is_absolute() else config, [f"--out_dir={out}", *overrides])
        t, m = cfg.train, cfg.model
        steps = t.max_iters
        if eval_every is None and steps is None:
            raise SystemExit(f"{config} runs by the clock (max_time, no max_iters): give --eval_every")
        t.eval_interval = eval_every or max(1, steps // evals)
        t.eval_iters = max(1, math.ceil(eval_tokens / (t.batch_size * m.block_size)))
        t.log_interval = t.eval_interval
        reached, reached_start, best = {}, {}, {"val_loss": float("inf")}

        def on_event(e):
            if e["event"] == "eval" and "val_loss" in e and e["val_loss"] < best["val_loss"]:
                best.update(val_loss=e["val_loss"], step=e["step"], elapsed_s=e["elapsed_s"])
            if e["event"] == "eval" and "val_loss" in e and not reached and e["val_loss"] <= target:
                reached.update(step=e["step"], elapsed_s=e["elapsed_s"], val_loss=e["val_loss"])
            if e["event"] == "start":
                reached_start.update(dtype=e["dtype"], params=e["params"])

        try:
            summary = trainer.train(cfg, on_event=on_event, should_stop=lambda: bool(reached))
            last = {"final_val_loss": summary.get("final_val_loss"), "elapsed_s": summary.get("elapsed_s"),
                    "best": best}
        except trainer.Interrupted:
            last = {}
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"config": config, "reached": bool(reached), **reached, "ran_out": last, "peak_rss_mb": round(rss_mb),
            "eval_interval": t.eval_interval, "eval_iters": t.eval_iters, **reached_start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="+")
    p.add_argument("--target", required=True, help="validation loss to reach, or 'baseline' (the first config's best)")
    p.add_argument("--eval_every", type=int, default=None, help="evaluate every this many steps (all configs)")
    p.add_argument("--repeats", type=int, default=1, help="runs per config, alternating (medians reported)")
    p.add_argument("--evals", type=int, default=60, help="about this many evaluations over a whole run")
    p.add_argument("--eval_tokens", type=int, default=65536, help="validation tokens per evaluation")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, overrides = p.parse_known_args()
    overrides = [o for o in overrides if o != "--"]
    every = [f"--eval_every={args.eval_every}"] if args.eval_every else []
    if args.worker:
        print(json.dumps(worker(args.configs[0], float(args.target), args.evals, args.eval_tokens, overrides,
                                args.eval_every)))
        return
    print(f"machine: {describe()}; torch threads default; target val loss {args.target}", flush=True)
    results = {c: [] for c in args.configs}

    def run(config: str, target: float, r: int) -> dict:
        done = subprocess.run([sys.executable, __file__, config, "--worker", f"--target={target}",
                               f"--evals={args.evals}", f"--eval_tokens={args.eval_tokens}", *every, *overrides],
                              capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            raise SystemExit(f"{config} failed:\n{done.stderr[-3000:]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        results[config].append(result)
        print(f"run {r + 1} {json.dumps(result)}", flush=True)
        return result

    baseline_mode = args.target == "baseline"
    if baseline_mode:  # the first config's best, from whole runs of it
        for r in range(args.repeats):
            run(args.configs[0], float("-inf"), r)
        args.target = max(x["ran_out"]["best"]["val_loss"] for x in results[args.configs[0]])
        print(f"target: the baseline's best evaluated val loss, {args.target:.4f} (the higher of its runs' bests)",
              flush=True)
    else:
        args.target = float(args.target)
    for r in range(args.repeats):
        for config in args.configs:
            if len(results[config]) <= r:
                run(config, args.target, r)
    print(f"\n| config | dtype | reached {args.target:.4f} at step | training time to {args.target} (s) | "
          f"vs {args.configs[0]} | peak RSS (MB) |\n|---|---|---|---|---|---|")
    base_runs = results[args.configs[0]]
    base_hit = [r for r in base_runs if r["reached"]]
    # the first config's time to the target; where it never got there, its whole run's training time,
    # against which a ratio is an upper bound ("<")
    # (with --target baseline: its whole run's training time, by definition)
    base = (statistics.median(r["elapsed_s"] for r in base_hit), "") if base_hit else \
        (statistics.median(r["ran_out"]["elapsed_s"] for r in base_runs), "" if baseline_mode else "< ")
    for config, runs in results.items():
        rss = max(r["peak_rss_mb"] for r in runs)
        hit = [r for r in runs if r["reached"]]
        if baseline_mode and config == args.configs[0]:
            bests = ", ".join(f"{r['ran_out']['best']['val_loss']:.4f} at step {r['ran_out']['best']['step']}"
                              for r in runs)
            print(f"| {config} (whole runs; best {bests}) | {runs[0].get('dtype')} | - | {base[0]:.1f} (whole run) | "
                  f"1.00x | {rss} |")
            continue
        if not hit:
            ends = ", ".join(f"{r['ran_out']['elapsed_s']:.1f} s, final val loss {r['ran_out']['final_val_loss']:.4f}"
                             for r in runs)
            print(f"| {config} | {runs[0].get('dtype')} | not reached in {len(runs)} whole run(s) ({ends}) | "
                  f"> {min(r['ran_out']['elapsed_s'] for r in runs):.1f} | - | {rss} |")
            continue
        seconds = statistics.median(r["elapsed_s"] for r in hit)
        spread = f" ({min(r['elapsed_s'] for r in hit):.1f}-{max(r['elapsed_s'] for r in hit):.1f})" if len(hit) > 1 else ""
        missed = f", missed in {len(runs) - len(hit)} of {len(runs)}" if len(hit) < len(runs) else ""
        print(f"| {config} | {hit[0].get('dtype')} | {statistics.median(r['step'] for r in hit):.0f}{missed} | "
              f"{seconds:.1f}{spread} | {base[1]}{seconds / base[0]:.2f}x | {rss} |")
    ends = "; ".join(f"{c}: {statistics.median(r['ran_out']['elapsed_s'] for r in runs):.1f} s" for c, runs in
                     results.items() if all(r["ran_out"] for r in runs))
    if ends:
        print(f"\nwhole runs' training time (median): {ends}")


if __name__ == "__main__":
    main()
