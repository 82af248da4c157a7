"""Choose task spell's copy_margin on sentences the reported numbers never see: each run's final model
(last.pt) corrects a calibration set (the validation sentences just after the held-out ones, with noise
from a stream of their own) at each margin, through the real evaluation (SpellJob.evaluate).

    python bench/spell_margin.py out/spell_a out/spell_b [--margins none,0,1,2,3,4,6] [--size 300]
    python bench/spell_margin.py out/spell_a --held_out --margins 2     # the reported held-out set instead

Prints, per run and margin: exact match, CER, CER / the noisy input's CER, word accuracy on the corrupted
and the untouched words, and clean sentences changed (after correction_filter), and the machine. With
--held_out, the run's own held-out sentences (what its final line reports), e.g. to re-evaluate a run's
final model with a decoding setting chosen on the calibration set (copy_margin changes no weight).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402
from lm.checkpoint import load, load_weights  # noqa: E402
from lm.config import from_dict  # noqa: E402
from lm.data.corpus import obtain_corpus  # noqa: E402
from lm.device import choose_dtype  # noqa: E402
from lm.data.spell import prepare_sentences  # noqa: E402
from lm.jobs import HELD_OUT_STREAM, _rng, make_job  # noqa: E402
from lm.nn import make_model  # noqa: E402
from lm.spelling import spelling_scores  # noqa: E402

CALIBRATION_STREAM = HELD_OUT_STREAM + 100  # noise of its own, never the held-out set's


def calibration_set(job, cfg, run_dir: Path, size: int) -> tuple[list[str], list[str]]:
    """The validation sentence right after each held-out one (evenly spaced picks + 1), not held out."""
    d = cfg.data
    data = prepare_sentences(obtain_corpus(d.data_path).files, run_dir / "data" / "spell", d.val_fraction, d.min_len,
                             d.max_len, lambda event: None)
    val = data.val
    held = set(np.linspace(0, len(val) - 1, min(d.held_out_size, len(val))).round().astype(int).tolist())
    picks = [i + 1 for i in sorted(held) if i + 1 < len(val) and i + 1 not in held][:size]
    clean = [val[i] for i in picks if not job.task.unknown_characters(val[i])]
    noisy = [job.noise.corrupt(s, _rng(cfg.train.seed, CALIBRATION_STREAM, i)).noisy for i, s in enumerate(clean)]
    return clean, noisy


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+")
    p.add_argument("--margins", default="none,0,1,2,3,4,6")
    p.add_argument("--size", type=int, default=300)
    p.add_argument("--held_out", action="store_true", help="the run's held-out set, not the calibration set")
    args = p.parse_args()
    print(describe())
    margins = [None if m == "none" else float(m) for m in args.margins.split(",")]
    for run in args.runs:
        run_dir = Path(run)
        ckpt = load(run_dir / "last.pt")
        cfg = from_dict(ckpt["config"])
        job = make_job(cfg, ckpt, run_dir, lambda event: None)
        model = make_model(cfg)
        load_weights(model, ckpt, run_dir / "last.pt")
        if not args.held_out:
            job.clean, job.noisy = calibration_set(job, cfg, run_dir, args.size)
        noisy_cer = spelling_scores(job.noisy, job.clean, job.noisy)["cer"]
        dtype, _ = choose_dtype(cfg.train.dtype, torch.device("cpu"))  # as the run evaluated
        which = "held-out" if args.held_out else "calibration"
        print(f"\n{run} (step {ckpt['step']}): {len(job.clean)} {which} sentences, noisy input CER "
              f"{100 * noisy_cer:.2f}%")
        print("| copy_margin | exact | CER | CER / noisy | words right: corrupted | untouched | clean changed |\n"
              "|---|---|---|---|---|---|---|")
        for margin in margins:
            cfg.data.copy_margin = margin
            r = job.evaluate(model, torch.device("cpu"), dtype)
            print(f"| {'null' if margin is None else margin} | {100 * r['val_exact']:.1f}% | {100 * r['val_cer']:.2f}% | "
                  f"{r['val_cer'] / noisy_cer:.3f} | {100 * r['val_word_acc_corrupted']:.1f}% | "
                  f"{100 * r['val_word_acc_untouched']:.1f}% | {100 * r['val_clean_changed']:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
