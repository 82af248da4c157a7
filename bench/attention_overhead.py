"""Does the code that returns attention weights slow normal training or sampling? This tree against an
earlier revision (default: 3e6d4ee, before the AttentionMaps convention), alternating runs.

    python bench/attention_overhead.py [--against REV] [--rounds 3] [--steps 30]

Each round runs one worker process on this tree and one on REV (a temporary `git worktree`), one after
the other, never at the same time. A worker times, after warm-up steps, the real training step
(lm.trainer.train_step) of the shipped config.yaml (GPT, batch 64, block 64) and of configs/copy.yaml
(encoder-decoder), and cached sampling (lm.generate.generate, 256 new tokens). Nothing asks for
weights there: this measures what the weights' plumbing costs everyone else. Prints the median of each
measure per tree and the ratio this tree / REV (1.00 = no change; > 1 slower), then, in this process,
what asking for the weights costs when one does (return_weights=True forces the explicit path).
Data: Tiny Shakespeare from ../shared when present, else the offline corpus (python docs).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

WORKER = r"""
import json, sys, tempfile, time
from pathlib import Path
import torch
tree, corpus, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, tree)
from lm.config import load
from lm.generate import generate
from lm.trainer import Run, prepare_job, train_step

def train_speed(config, overrides):
    with tempfile.TemporaryDirectory() as out:
        cfg = load(Path(tree) / config, [f"--out_dir={out}", "--device=cpu", "--dtype=float32", *overrides])
        job = prepare_job(cfg, None, Path(out), lambda e: None)
        run = Run(cfg, job, "bench", Path(out))
        run.model.train()
        batches = job.batches(start=0)
        for _ in range(5):
            train_step(run, batches, 1e-4)
        t0 = time.perf_counter()
        for _ in range(steps):
            train_step(run, batches, 1e-4)
        return steps / (time.perf_counter() - t0), run.model

result = {}
result["gpt_train_steps_per_s"], model = train_speed("config.yaml", [f"--data_path={corpus}"])
result["seq2seq_train_steps_per_s"], _ = train_speed("configs/copy.yaml", [])
model.eval()
prompt = torch.zeros(1, 1, dtype=torch.long)
list(generate(model, prompt, 32, 1.0, generator=torch.Generator().manual_seed(0)))
t0 = time.perf_counter()
list(generate(model, prompt, 256, 1.0, generator=torch.Generator().manual_seed(0)))
result["sample_tokens_per_s"] = 256 / (time.perf_counter() - t0)
print(json.dumps(result))
"""


def worker(tree: Path, corpus: Path, steps: int) -> dict:
    done = subprocess.run([sys.executable, "-c", WORKER, str(tree), str(corpus), str(steps)], capture_output=True,
                          text=True, cwd=tree)
    if done.returncode:
        raise SystemExit(f"worker on {tree} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def weights_cost(corpus_vocab: int = 65) -> tuple[float, float]:
    """Seconds per forward of the config.yaml GPT (batch 64) without and with return_weights, alternating."""
    import torch

    sys.path.insert(0, str(ROOT))
    from lm.config import load
    from lm.nn import GPT

    cfg = load(ROOT / "config.yaml")
    cfg.model.vocab_size = corpus_vocab
    torch.manual_seed(0)
    model = GPT(cfg.model).eval()
    idx = torch.randint(corpus_vocab, (64, cfg.model.block_size))
    times = {False: [], True: []}
    with torch.no_grad():
        for _ in range(7):
            for ask in (False, True):
                t0 = time.perf_counter()
                model(idx, return_weights=ask)
                times[ask].append(time.perf_counter() - t0)
    return statistics.median(times[False][2:]), statistics.median(times[True][2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", default="3e6d4ee", help="git revision to compare with (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (medians are reported)")
    p.add_argument("--steps", type=int, default=30, help="timed training steps per config per worker")
    args = p.parse_args()
    corpus = SHAKESPEARE if SHAKESPEARE.is_file() else None
    if corpus is None:
        sys.path.insert(0, str(ROOT))
        from lm.data.corpus import _offline_text

        corpus = Path(tempfile.mkdtemp()) / "offline.txt"
        corpus.write_text(_offline_text(), encoding="utf-8")
    print(f"machine: {describe()}; python {platform.python_version()}")
    print(f"corpus: {corpus}; {args.rounds} rounds, alternating this tree and {args.against}")
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old), args.against], check=True)
        try:
            results = {"this tree": [], args.against: []}
            for r in range(args.rounds):
                for name, tree in (("this tree", ROOT), (args.against, old)):
                    results[name].append(worker(tree, corpus, args.steps))
                    print(f"round {r + 1} {name}: {results[name][-1]}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False)
    print(f"\n| measure | this tree | {args.against} | time ratio (this / {args.against}) |\n|---|---|---|---|")
    for key in results["this tree"][0]:
        new = statistics.median(r[key] for r in results["this tree"])
        ref = statistics.median(r[key] for r in results[args.against])
        spread = (f"{min(r[key] for r in results['this tree']):.2f}-{max(r[key] for r in results['this tree']):.2f}"
                  f" / {min(r[key] for r in results[args.against]):.2f}-{max(r[key] for r in results[args.against]):.2f}")
        print(f"| {key} (higher is faster; range {spread}) | {new:.2f} | {ref:.2f} | {ref / new:.3f} |")
    plain, asked = weights_cost()
    print(f"\nforward of the config.yaml GPT, batch 64: {plain * 1e3:.1f} ms; with return_weights=True "
          f"{asked * 1e3:.1f} ms ({asked / plain:.2f}x, only when asked)")


if __name__ == "__main__":
    main()
