"""Train a character-level GPT, or an encoder-decoder on a seq2seq task.

    python train.py --config config.yaml [--resume[=PATH]] [--overwrite] [--name=value ...]

Any config key can be overridden: --lr=1e-3, --train.lr=1e-3, --max_iters 500.
--resume continues the run in out_dir from its newest complete checkpoint; --resume=PATH
continues from that checkpoint file or run directory (writing to out_dir). With no
--config, the checkpoint's own config is used, plus any overrides. A fresh run into an
out_dir that already holds one is refused unless --overwrite is given.
SIGTERM or Ctrl-C writes last.pt at the next step boundary, then exits with 143 or 130.
"""

from __future__ import annotations

import signal
import sys

from tqdm import tqdm

from lm import checkpoint, config
from lm.checkpoint import CheckpointError
from lm.config import ConfigError
from lm.data import DataError
from lm.trainer import Interrupted, TrainingError, train

USAGE = __doc__.strip()


class Args:
    def __init__(self):
        self.config: str | None = None  # --config FILE
        self.resume: bool | str = False  # --resume, or --resume=PATH
        self.overwrite = False  # --overwrite
        self.overrides: list[str] = []  # --name=value


def parse_args(argv: list[str]) -> Args:
    """Read --config, --resume[=PATH], --overwrite and '--name=value' / '--name value' overrides."""
    args = Args()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if arg == "--resume":
            args.resume = True
        elif arg.startswith("--resume="):
            args.resume = arg.split("=", 1)[1]
            if not args.resume:
                raise ConfigError("--resume= needs a checkpoint file or run directory")
        elif arg == "--overwrite":
            args.overwrite = True
        elif arg == "--config" or arg.startswith("--config="):
            if "=" in arg:
                args.config = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                args.config, i = argv[i + 1], i + 1
            else:
                raise ConfigError("--config needs a file path")
        elif arg.startswith("--") and "=" in arg:
            args.overrides.append(arg)
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
            args.overrides.append(f"{arg}={argv[i + 1]}")
            i += 1
        else:
            raise ConfigError(f"cannot read argument {arg!r}; expected --config FILE, --resume[=PATH], "
                              f"--overwrite or --name=value")
        i += 1
    if args.resume and args.overwrite:
        raise ConfigError("--resume and --overwrite contradict each other; give one")
    return args


def load_config(args: Args) -> config.Config:
    if args.resume and args.config is None:
        # resume from the checkpoint's own config; out_dir may come from the overrides
        out_dir = config.load(None, args.overrides).train.out_dir
        source = out_dir if args.resume is True else args.resume
        _, saved, _ = checkpoint.load_latest(source)
        return config.build(saved["config"], [config.parse_override(o) for o in args.overrides],
                            source="checkpoint config")
    return config.load(args.config, args.overrides)


class StopOnSignal:
    """SIGTERM / SIGINT (Ctrl-C) ask the trainer to stop at the next step boundary; a second one stops at once."""

    def __init__(self):
        self.signal: int | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum

    def __call__(self) -> bool:
        return self.signal is not None

    @property
    def exit_code(self) -> int:
        return 128 + (self.signal or signal.SIGINT)


def describe(m: dict) -> str:
    """Evaluation metrics as one readable line (whichever of them the job reports)."""
    parts = []
    if "eval_train_loss" in m:
        parts.append(f"train loss {m['eval_train_loss']:.4f}")
    parts.append(f"val loss {m['val_loss']:.4f}")
    if "val_bpc" in m:
        parts[-1] += f" ({m['val_bpc']:.3f} bits/char)"
    for prefix, name in (("val", "held-out"), ("long", "longer")):
        if f"{prefix}_exact" in m:
            parts.append(f"{name} exact match {100 * m[f'{prefix}_exact']:.1f}%, "
                         f"token accuracy {100 * m[f'{prefix}_token_acc']:.1f}%")
    return ", ".join(parts)


class Console:
    """Turns the trainer's events into a progress bar and readable lines."""

    def __init__(self):
        self.bar = None

    def __call__(self, e: dict) -> None:
        kind = e["event"]
        if kind == "corpus_note":
            banner = "!" * 78
            print(f"{banner}\n{e['note']}\n{banner}", file=sys.stderr, flush=True)
        elif kind == "resume":
            for problem in e["skipped"]:
                print(f"warning: passed over a damaged checkpoint: {problem}", file=sys.stderr)
            print(f"resuming from {e['path']} at step {e['step']}")
            for key, old, new in e["changed"]:
                print(f"  changed since the checkpoint: {key}: {old!r} -> {new!r}")
        elif kind == "task":
            long = f", longer lengths {e['long_lengths'][0]}-{e['long_lengths'][1]}" if e["long_lengths"] else ""
            print(f"task: {e['task']} (vocab {e['vocab_size']}), training lengths {e['lengths'][0]}-{e['lengths'][1]}, "
                  f"held-out sets of {e['held_out']} examples{long}")
        elif kind == "data":
            cache = "reused token cache" if e["reused_cache"] else "encoded"
            print(f"data: {e['path']} ({cache}): vocab {e['vocab_size']}, "
                  f"{e['train_tokens']:,} train / {e['val_tokens']:,} val tokens")
        elif kind == "start":
            t = e["config"]["train"]
            print(f"model: {e['params'] / 1e6:.2f}M parameters, ~{e['flops_per_token'] / 1e6:.1f} MFLOPs per "
                  f"token (training); device {e['device']}, dtype {e['dtype']}; {e['total_steps']} steps of "
                  f"batch {t['batch_size']} x {t['grad_accum']}")
            self.bar = tqdm(total=e["total_steps"], initial=e["start_step"], desc="train", unit="step",
                            dynamic_ncols=True, mininterval=0.5)
        elif kind == "step":
            self.bar.update(1)
        elif kind == "log":
            self.bar.set_postfix(loss=f"{e['train_loss']:.4f}", lr=f"{e['lr']:.2e}",
                                 tok_s=f"{e['tokens_per_sec']:,.0f}", refresh=False)
        elif kind == "eval":
            mark = " (best, saved best.pt)" if e["best"] else ""
            self.bar.write(f"step {e['step']}: {describe(e)}{mark}")
        elif kind == "final":
            if self.bar:
                self.bar.close()
            where = "the whole validation split" if "final_val_bpc" in e else "the held-out sets"
            final = {k[len("final_"):]: v for k, v in e.items() if k.startswith("final_")}
            print(f"final, over {where}: {describe(final)}; after {e['step']} steps, {e['elapsed_s']:.1f} s of "
                  f"training; best eval val loss {e['best_val_loss']:.4f}")
            print(f"checkpoints and metrics.jsonl in {e['out_dir']}")

    def close(self):
        if self.bar:
            self.bar.close()


def main(argv: list[str]) -> int:
    console = Console()
    stop = StopOnSignal()
    try:
        args = parse_args(argv)
        cfg = load_config(args)
        train(cfg, resume=args.resume, overwrite=args.overwrite, on_event=console, should_stop=stop)
    except Interrupted as e:
        console.close()
        print(f"interrupted: {e}", file=sys.stderr)
        return stop.exit_code
    except (ConfigError, DataError, CheckpointError) as e:
        console.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except TrainingError as e:
        console.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        console.close()
        print("interrupted twice: stopped at once, without a checkpoint of the current step", file=sys.stderr)
        return stop.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
