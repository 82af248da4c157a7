"""See inside a trained model: attention maps of one input, across checkpoints, or the loss curves of runs.

Attention of a checkpoint on one input (a language model's --text, a seq2seq task's --input):
    python visualize.py --checkpoint out/shakespeare_char/best.pt --text "ROMEO: hello" --out viz/
    python visualize.py --checkpoint out/reverse/best.pt --input "5 7 9 2" --out viz/
    python visualize.py --checkpoint out/graph/best.pt --input "0-1 1-2 2-3 3-0 2-4; source 0" --out viz/
writes into --out, for every kind of attention the model has (encoder_self, decoder_self, cross):
    KIND_layerL_headH.png   one head (--layer, default the last layer; --head, default 0)
    KIND_layerL.png         every head of that layer
    KIND_overview.png       every layer and head
    attention.json          tokens, every map as [layer][head][query][key], each head's mean attention
                            distance and entropy, the model's settings
    attention.html          an interactive explorer of the same, one file that works offline
(task graph: one row and column per node, the cells its mask forbids, no edge, drawn grey)

Attention across checkpoints of one model (a directory: every *.pt file in it; or several files), in the
order of their steps, each labelled with its held-out exact match (seq2seq) or validation loss (lm):
    python visualize.py --checkpoint out/reverse/ckpt/ --input "5 7 9 2" --out viz/
writes into --out:
    KIND_layerL_headH_strip.png   that head at every checkpoint, left to right, with its distance and
                                  entropy under each, and both against step
    attention.json                {"frames": [{"step", "label", "checkpoint", ...one record...}], "view"}
    attention.html                the explorer with a slider over the checkpoints

Loss curves of several runs, overlaid (labelled by run directory and the settings that differ):
    python visualize.py --runs out/a out/b --out viz/          -> viz/runs.png

Exit codes: 0 done; 1 a file could not be written; 2 a bad setting, input, checkpoint or run
directory (the message says which); 130 stopped by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lm.inspect import plots
from lm.inspect.attention_maps import Frame, record
from lm.checkpoint import CheckpointError, load_model
from lm.config import ConfigError
from lm.device import resolve_device
from lm.inspect.explorer import write_explorer
from lm.files import write_text_atomic
from lm.inspect.runs import RunError, check_same_model, checkpoint_files, load_runs, load_snapshot, step_label


def parse_args(argv):
    p = argparse.ArgumentParser(description="Attention maps of a checkpoint or of several, or loss curves of runs.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--checkpoint", nargs="+", metavar="PATH",
                      help="checkpoint file whose attention to draw; several files, or a directory (every *.pt "
                           "file in it, e.g. a run's ckpt/): that attention across them, in the order of their steps")
    what.add_argument("--runs", nargs="+", metavar="RUN_DIR", help="run directories whose loss curves to overlay")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--text", help="language model: the text to attend over (at most block_size characters)")
    text.add_argument("--input", help='seq2seq task: the source, e.g. "5 7 9 2", "123+45" or a grid "012/340/567"; '
                                      'task graph: an edge list, e.g. "0-1 1-2 2-3 3-0 2-4; source 0"')
    p.add_argument("--out", default="viz", help="directory for the files (default: %(default)s)")
    p.add_argument("--layer", type=int, default=None, help="layer of the one-head and one-layer plots "
                                                             "(0-based; default: the last)")
    p.add_argument("--head", type=int, default=None, help="head of the one-head plot (0-based; default: 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default: %(default)s)")
    return p.parse_args(argv)


def check_index(name: str, value: int, count: int, what: str) -> None:
    if not 0 <= value < count:
        raise ValueError(f"--{name} {value} is not allowed; this model has {count} {what}: 0..{count - 1}")


def layer_and_head(args, cfg) -> tuple[int, int]:
    """The --layer and --head to draw, checked against the model (differential attention has num_heads / 2)."""
    layers = cfg.model.num_blocks
    differential = cfg.model.attention == "differential"
    heads = cfg.model.num_heads // 2 if differential else cfg.model.num_heads
    layer = layers - 1 if args.layer is None else args.layer
    head = 0 if args.head is None else args.head
    check_index("layer", layer, layers, "layers")
    check_index("head", head, heads, "heads" + (" (differential: num_heads / 2)" if differential else ""))
    return layer, head


def text_for(args, cfg, checkpoint) -> str:
    """The --text (language model) or --input (seq2seq task) to attend over, checked against the model's kind."""
    lm_task = cfg.data.task == "lm"
    if lm_task and args.input is not None:
        raise ValueError(f"--input is for seq2seq task checkpoints; {checkpoint} is a language model: use --text")
    if not lm_task and args.text is not None:
        raise ValueError(f"--text is for language-model checkpoints; {checkpoint} was trained on task "
                         f"{cfg.data.task!r}: use --input")
    text = args.text if lm_task else args.input
    if text is None:
        raise ValueError("give the text to attend over with --text" if lm_task else
                         f"give the source with --input (task {cfg.data.task!r})")
    return text


def write_data(data: dict, out: Path) -> list[Path]:
    """attention.json and the explorer page attention.html of the same data."""
    write_text_atomic(out / "attention.json", json.dumps(data, allow_nan=False) + "\n")
    write_explorer(data, out / "attention.html")
    return [out / "attention.json", out / "attention.html"]


def report(rec, text: str, prefix: str = "") -> None:
    """A seq2seq record's decoded output (a graph's answers) on stdout, and a note on stderr when decoding
    found no EOS."""
    if rec.output is not None:
        print(f"{prefix}input {text!r} -> output {rec.output!r}")
        if not rec.ended:
            print(f"note: {prefix}no end-of-sequence token within {len(rec.tokens['target'])} output tokens; the "
                  f"last one is no decoder input, so it has no row", file=sys.stderr)


def attention(args, checkpoint: str) -> list[Path]:
    """Record one checkpoint's attention on the input, then write the PNGs, attention.json and attention.html."""
    device = resolve_device(args.device)
    model, vocab, cfg = load_model(checkpoint, device)
    text = text_for(args, cfg, checkpoint)
    layer, head = layer_and_head(args, cfg)
    rec = record(model, vocab, cfg, text, device)
    out = Path(args.out)
    written = []
    for kind in rec.maps:
        for path, draw in ((out / f"{kind}_layer{layer}_head{head}.png",
                            lambda p: plots.plot_head(rec, kind, layer, head, p)),
                           (out / f"{kind}_layer{layer}.png", lambda p: plots.plot_layer(rec, kind, layer, p)),
                           (out / f"{kind}_overview.png", lambda p: plots.plot_overview(rec, kind, p))):
            draw(path)
            written.append(path)
    written += write_data({**rec.to_json(), "view": {"layer": layer, "head": head}}, out)  # opens on the PNGs' head
    report(rec, text)
    return written


def across_checkpoints(args) -> list[Path]:
    """Record every checkpoint's attention on the input, one model's all (sorted by step), then write each
    kind's strip PNG, attention.json (the frames) and attention.html (with a slider over them)."""
    device = resolve_device(args.device)
    frames, first = [], None
    for path in checkpoint_files(args.checkpoint):
        snapshot = load_snapshot(path, device)
        if first is None:
            first = snapshot
            text = text_for(args, snapshot.cfg, path)
            layer, head = layer_and_head(args, snapshot.cfg)
        check_same_model(first, snapshot)
        rec = record(snapshot.model, snapshot.vocab, snapshot.cfg, text, device)
        frames.append(Frame(snapshot.step, step_label(snapshot.step, snapshot.evaluation), rec, str(path)))
    frames.sort(key=lambda f: f.step)  # stable: checkpoints of one step keep their order
    out = Path(args.out)
    written = []
    for kind in frames[0].record.maps:
        path = out / f"{kind}_layer{layer}_head{head}_strip.png"
        plots.plot_strip(frames, kind, layer, head, path)
        written.append(path)
    written += write_data({"frames": [f.to_json() for f in frames], "view": {"layer": layer, "head": head}}, out)
    for frame in frames:
        report(frame.record, text, prefix=f"step {frame.step}: ")
    return written


def loss_curves(args) -> list[Path]:
    path = Path(args.out) / "runs.png"
    plots.plot_runs(load_runs(args.runs), path)
    return [path]


def main(argv) -> int:
    args = parse_args(argv)
    try:
        if args.runs:
            given = [f"--{name}" for name in ("text", "input", "layer", "head") if getattr(args, name) is not None]
            if given:
                raise ValueError(f"{' and '.join(given)} {'goes' if len(given) == 1 else 'go'} with --checkpoint, "
                                 f"not with --runs")
            written = loss_curves(args)
        elif len(args.checkpoint) == 1 and not Path(args.checkpoint[0]).is_dir():
            written = attention(args, args.checkpoint[0])
        else:
            written = across_checkpoints(args)
    except (ValueError, CheckpointError, ConfigError, RunError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"error: cannot write into {args.out!r}: {e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
