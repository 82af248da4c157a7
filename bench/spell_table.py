"""Task spell: the results table of finished runs, from their metrics.jsonl (nothing is trained here).

    python bench/spell_table.py out/spell_s1337 out/spell_s1 out/spell_s2 [--names NAME ...]

Each run directory's final record (the last line of metrics.jsonl with "final": true) gives four rows:
the noisy input left as it is, the dictionary corrector, the model's raw output and the model after its
correction_filter, each with sentence exact match, CER, word accuracy on the corrupted and on the untouched
words, and the share of clean held-out sentences changed; then the run's steps and training time. With
several runs, a last table gives each row's mean and range. Prints the machine this script runs on
(the runs' own machine is the one that trained them: say so beside the numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

ROWS = (("noisy input", "noisy"), ("dictionary corrector", "dict"), ("model, raw output", "raw"),
        ("model, known-word filter", "val"))
COLUMNS = ("exact", "cer", "word_acc_corrupted", "word_acc_untouched", "clean_changed")


def final_record(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    finals = [r for r in records if r.get("final")]
    if not finals:
        raise SystemExit(f"{run}: no final record in metrics.jsonl (did the run finish?)")
    return finals[-1]


def rows(record: dict) -> dict[str, list[float | None]]:
    """Row name -> the COLUMNS in percent (None where a row has no such number)."""
    return {name: [100 * record[f"final_{key}_{c}"] if f"final_{key}_{c}" in record else None for c in COLUMNS]
            for name, key in ROWS}


def table(values: dict[str, list], title: str) -> str:
    head = "| " + title + " | exact match | CER | words right: corrupted | untouched | clean sentences changed |"
    lines = [head, "|---|---|---|---|---|---|"]
    for name, cells in values.items():
        lines.append(f"| {name} | " + " | ".join("" if v is None else v if isinstance(v, str) else f"{v:.2f}%"
                                                   for v in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run directories (out_dir of finished spell runs)")
    p.add_argument("--names", nargs="*", default=None, help="a label per run (default: its directory)")
    args = p.parse_args(argv)
    names = args.names or [str(r) for r in args.runs]
    if len(names) != len(args.runs):
        raise SystemExit(f"--names gives {len(names)} labels for {len(args.runs)} runs")
    print(describe())
    every = []
    for run, name in zip(args.runs, names):
        record = final_record(run)
        every.append(rows(record))
        print(f"\n{name}: {record['step']} steps, {record['elapsed_s']:.1f} s of training\n")
        print(table(every[-1], name))
    if len(every) > 1:
        summary = {}
        for row in every[0]:
            cells = []
            for i in range(len(COLUMNS)):
                got = [r[row][i] for r in every if r[row][i] is not None]
                cells.append(f"{sum(got) / len(got):.2f}% ({min(got):.2f}-{max(got):.2f})" if got else None)
            summary[row] = cells
        print(f"\nmean (range) over {len(every)} runs\n")
        print(table(summary, "mean (range)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
