"""Train a character-level GPT, or an encoder-decoder on a seq2seq task.

    python train.py --config config.yaml [--resume[=PATH]] [--overwrite] [--name=value ...]

Any config key can be overridden: --lr=1e-3, --train.lr=1e-3, --max_iters 500.
--resume continues the run in out_dir from its newest complete checkpoint; --resume=PATH
continues from that checkpoint file or run directory (writing to out_dir, a new run there).
With no --config, the checkpoint's own config is used, plus any overrides. A fresh run into
an out_dir that already holds one, or a resume into an out_dir that holds another run, is
refused unless --overwrite is given. One training process per out_dir at a time.
SIGTERM or Ctrl-C writes last.pt at the next step boundary, then exits with 143 or 130.
Exit codes: 0 done, 1 training or writing failed, 2 bad config, data or checkpoint.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from tqdm import tqdm

from lm import checkpoint, config
from lm.answers import example_line
from lm.checkpoint import CheckpointError, ResumePoint
from lm.config import ConfigError
from lm.data.corpus import DataError
from lm.rundir import OutputError, RunDirError
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
    if args.resume is True and args.overwrite:
        raise ConfigError("--resume (continue the run in out_dir) and --overwrite (replace it) contradict each "
                          "other; give one (--resume=PATH --overwrite continues PATH over another run in out_dir)")
    return args


def load_config(args: Args) -> tuple[config.Config, ResumePoint | None]:
    """The run's config and, when resuming, the checkpoint to continue (read here, once, and passed on
    to the trainer).

    Resuming without --config takes the checkpoint's own config, and the overrides are checked
    against it (e.g. --min_lr against the checkpoint's lr, not the default one).
    """
    if not args.resume:
        return config.load(args.config, args.overrides), None
    if args.config is not None:
        cfg = config.load(args.config, args.overrides)
        return cfg, checkpoint.resume_point(args.resume, cfg.train.out_dir)
    # --resume alone continues the run in out_dir: the one the overrides name, or the default
    out_dir = (config.override_value(args.overrides, "out_dir", config.TrainConfig().out_dir)
               if args.resume is True else None)
    point = checkpoint.resume_point(args.resume, out_dir)
    cfg = config.build(point.ckpt["config"], [config.parse_override(o) for o in args.overrides],
                       source="checkpoint config + overrides")
    return cfg, point


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
    if "val_cer" in m:  # task spell: the model, then the two baselines
        parts.append(f"held-out exact match {100 * m['val_exact']:.1f}%, CER {100 * m['val_cer']:.2f}%, words "
                     f"right: corrupted {100 * m['val_word_acc_corrupted']:.1f}%, untouched "
                     f"{100 * m['val_word_acc_untouched']:.1f}%; clean sentences changed "
                     f"{100 * m['val_clean_changed']:.1f}% (raw model output: {100 * m['raw_exact']:.1f}%, "
                     f"{100 * m['raw_cer']:.2f}%, {100 * m['raw_clean_changed']:.1f}% changed; noisy input: "
                     f"{100 * m['noisy_exact']:.1f}%, {100 * m['noisy_cer']:.2f}%; dictionary: "
                     f"{100 * m['dict_exact']:.1f}%, {100 * m['dict_cer']:.2f}%)")
        return ", ".join(parts)
    for prefix, name in (("val", "held-out"), ("long", "longer")):
        if f"{prefix}_exact" in m:
            unit = "node" if f"{prefix}_node_acc" in m else "token"  # task graph scores nodes
            parts.append(f"{name} exact match {100 * m[f'{prefix}_exact']:.1f}%, "
                         f"{unit} accuracy {100 * m[f'{prefix}_{unit}_acc']:.1f}%")
    return ", ".join(parts)


def examples_text(examples: list[dict], encoding: str | None = "utf-8") -> str:
    """The examples of an evaluation (lm.answers.example_line), a line each, indented, for under its line.
    What the output's encoding cannot write (a corpus's characters, ✓ on a cp1252 pipe) becomes '?'."""
    encoding = encoding or "utf-8"
    return "\n".join(f"  {example_line(x)}" for x in examples).encode(encoding, "replace").decode(encoding)


class PlainProgress:
    """Progress for a log file or pipe (not a terminal): a plain line at each tenth of the run and at
    least every `every` seconds, instead of a progress bar's carriage-return frames. The run is counted
    in steps, or (unit "s", a run by the clock) in seconds of training of its max_time budget."""

    def __init__(self, total: float, start: float, stream=sys.stderr, every: float = 30.0, unit: str = "step"):
        self.total, self.n, self.stream, self.every, self.unit = total, start, stream, every, unit
        self.start, self.t0 = start, time.monotonic()
        self.last_time, self.last_tenth = None, int(10 * start // (total or 1))

    def update(self, n: float = 1) -> None:
        self.n += n

    def log(self, e: dict) -> None:
        now = time.monotonic()
        tenth = int(10 * self.n // (self.total or 1))
        if self.last_time is not None and tenth == self.last_tenth and now - self.last_time < self.every \
                and self.n < self.total:
            return
        self.last_time, self.last_tenth = now, tenth
        spent = now - self.t0
        done = self.n - self.start
        left = spent / done * max(0.0, self.total - self.n) if done else 0.0
        percent = f"({100 * self.n / (self.total or 1):.0f}%)"
        where = (f"{self.n:.0f}/{self.total:.0f} s {percent}, step {e['step']}" if self.unit == "s"
                 else f"step {self.n}/{self.total} {percent}")
        print(f"train: {where}, loss {e['train_loss']:.4f}, lr {e['lr']:.2e}, {e['tokens_per_sec']:,.0f} tok/s, "
              f"{spent:.0f} s elapsed, ~{left:.0f} s left", file=self.stream, flush=True)


class StageProgress:
    """Progress of one stage of preparing a corpus (scan, bpe, encode): a bar on a terminal; otherwise, once
    the stage has run `quiet` seconds, a plain line at each tenth (at most one every `quiet` seconds), at
    least every `every` seconds, and at its end."""

    STAGES = {"scan": ("reading and checking", "B"), "bpe": ("learning the BPE", "merges"),
              "encode": ("encoding", "B")}

    def __init__(self, stage: str, total: int, stream=sys.stderr, every: float = 30.0, quiet: float = 5.0):
        self.what, self.unit = self.STAGES.get(stage, (stage, "it"))
        self.total, self.stream, self.every, self.quiet = total, stream, every, quiet
        self.bar = (tqdm(total=total, desc=f"data: {self.what}", unit=self.unit, unit_scale=self.unit == "B",
                         unit_divisor=1024, dynamic_ncols=True, mininterval=0.5, file=stream)
                    if stream.isatty() else None)
        self.done, self.t0, self.last_time, self.last_tenth, self.printed = 0, time.monotonic(), None, 0, False

    def update(self, done: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.done)
            self.done = done
            return
        self.done, now = done, time.monotonic()
        since = now - (self.last_time or self.t0)
        tenth = 10 * done // max(1, self.total)
        if done >= self.total:
            if not self.printed or self.last_tenth >= 10:  # quiet stage, or its end already shown
                return
        elif not (since >= self.every or (tenth != self.last_tenth and since >= self.quiet)):
            return
        self.last_time, self.last_tenth, self.printed = now, tenth, True
        spent = now - self.t0
        left = f", ~{spent / done * (self.total - done):.0f} s left" if 0 < done < self.total else ""
        amount = (f"{done / 2**20:,.1f} / {self.total / 2**20:,.1f} MiB" if self.unit == "B"
                  else f"{done:,} / {self.total:,} {self.unit}")
        print(f"data: {self.what} {amount} ({100 * done / max(1, self.total):.0f}%), {spent:.0f} s elapsed{left}",
              file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def kept_line(t: dict, size: int) -> str:
    """What the start says of the checkpoints kept over time: where, how often, and what each costs."""
    when = [f"every {t['keep_every']} steps"] if t["keep_every"] else []
    when += ["at the end of every epoch"] if t["keep_every_epoch"] else []
    cap = f", at most {t['keep_last']} (the oldest removed)" if t["keep_last"] else ""
    each = f"{size / 2**20:,.1f} MiB" if size >= 2**20 else f"{size / 2**10:,.1f} KiB"
    return f"keeping a checkpoint {' and '.join(when)} in {t['out_dir']}/ckpt/ (~{each} each{cap})"


class Console:
    """Turns the trainer's events into progress (a bar on a terminal, plain lines otherwise) and readable lines."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.bar = None  # tqdm on a terminal, PlainProgress otherwise
        self.stage = None  # (name, StageProgress) of the corpus preparation under way
        self.budget = None  # max_time of a run by the clock (progress in seconds), else None (in steps)

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
        elif kind == "task" and e["task"] == "spell":
            self.close_stage()
            cache = "reused sentence files" if e["reused_cache"] else "split into sentences"
            print(f"task: spell on {e['path']} ({cache}): {e['sentences'][0]:,} train / {e['sentences'][1]:,} val "
                  f"sentences of {e['lengths'][0]}-{e['lengths'][1]} characters, vocab {e['vocab_size']}; held-out "
                  f"{e['held_out']} sentences: noisy input exact {100 * e['noisy_exact']:.1f}%, CER "
                  f"{100 * e['noisy_cer']:.2f}%; dictionary corrector exact {100 * e['dict_exact']:.1f}%, CER "
                  f"{100 * e['dict_cer']:.2f}%", flush=True)
        elif kind == "task":
            long = f", longer lengths {e['long_lengths'][0]}-{e['long_lengths'][1]}" if e["long_lengths"] else ""
            print(f"task: {e['task']} (vocab {e['vocab_size']}), training lengths {e['lengths'][0]}-{e['lengths'][1]}, "
                  f"held-out sets of {e['held_out']} examples{long}")
        elif kind == "prepare":
            if self.stage is None or self.stage[0] != e["stage"]:
                self.close_stage()
                self.stage = (e["stage"], StageProgress(e["stage"], e["total"], self.stream))
            self.stage[1].update(e["done"])
        elif kind == "tokenizer":
            self.close_stage()
            print(f"tokenizer: {e['message']}", flush=True)
        elif kind == "data":
            self.close_stage()
            cache = "reused token cache" if e["reused_cache"] else "encoded"
            files = f"{e['files']:,} files, " if e["files"] > 1 else ""
            print(f"data: {e['path']} ({files}{cache}): vocab {e['vocab_size']}, "
                  f"{e['train_tokens']:,} train / {e['val_tokens']:,} val tokens")
        elif kind == "start":
            t = e["config"]["train"]
            self.budget = e.get("max_time")  # seconds of training, for a run by the clock
            batch = f"batch {t['batch_size']} x {t['grad_accum']}"
            if self.budget is None:
                length = f"{e['total_steps']} steps of {batch}"
            else:
                cap = f"; or at most {e['total_steps']} steps" if e["total_steps"] is not None else ""
                length = f"training for {self.budget:g} s of training time (evaluation excluded{cap}), {batch}"
            print(f"model: {e['params'] / 1e6:.2f}M parameters, ~{e['flops_per_token'] / 1e6:.1f} MFLOPs per "
                  f"token (training); device {e['device']}, dtype {e['dtype']} ({e['dtype_reason']}); "
                  f"{'torch.compile (the first step compiles); ' if e['compiled'] else ''}{length}; "
                  f"run {e['run_id']}", flush=True)
            if e.get("kept_checkpoint_bytes") is not None:
                print(kept_line(t, e["kept_checkpoint_bytes"]), flush=True)
            if t.get("logger") == "tensorboard":
                print(f"tensorboard: events in {t['out_dir']}/tensorboard (tensorboard --logdir {t['out_dir']})",
                      flush=True)
            if self.budget is not None:  # progress in seconds of the budget, e.g. "123/600 s"
                start = min(e["start_elapsed"], self.budget)
                if self.stream.isatty():
                    self.bar = tqdm(total=self.budget, initial=start, desc="train", unit="s",
                                    bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                                               "[{elapsed}<{remaining}{postfix}]",
                                    dynamic_ncols=True, mininterval=0.5, file=self.stream)
                else:
                    self.bar = PlainProgress(self.budget, start, self.stream, unit="s")
            elif self.stream.isatty():
                self.bar = tqdm(total=e["total_steps"], initial=e["start_step"], desc="train", unit="step",
                                dynamic_ncols=True, mininterval=0.5, file=self.stream)
            else:
                self.bar = PlainProgress(e["total_steps"], e["start_step"], self.stream)
        elif kind == "warning":
            tqdm.write(f"warning: {e['message']}", file=sys.stderr)
        elif kind == "step":
            if self.budget is None:
                self.bar.update(1)
            else:  # by the clock: up to the training time so far (set exactly, without summing rounding)
                done = min(e["elapsed_s"], self.budget)
                self.bar.update(done - self.bar.n)
                self.bar.n = done
        elif kind == "log":
            if isinstance(self.bar, PlainProgress):
                self.bar.log(e)
            else:
                self.bar.set_postfix(loss=f"{e['train_loss']:.4f}", lr=f"{e['lr']:.2e}",
                                     tok_s=f"{e['tokens_per_sec']:,.0f}", refresh=False)
        elif kind == "eval":
            mark = " (best, saved best.pt)" if e["best"] else ""
            tqdm.write(f"step {e['step']}: {describe(e)}{mark}")
            if e.get("examples"):
                tqdm.write(examples_text(e["examples"], sys.stdout.encoding))
        elif kind == "final":
            self.close()
            where = "the whole validation split" if "final_val_bpc" in e else "the held-out sets"
            final = {k[len("final_"):]: v for k, v in e.items() if k.startswith("final_")}
            print(f"final, over {where}: {describe(final)}; after {e['step']} steps, {e['elapsed_s']:.1f} s of "
                  f"training; best eval val loss {e['best_val_loss']:.4f}")
            print(f"checkpoints, metrics.jsonl and loss.png in {e['out_dir']}")

    def close_stage(self):
        if self.stage is not None:
            self.stage[1].close()
        self.stage = None

    def close(self):
        self.close_stage()
        if isinstance(self.bar, tqdm):
            self.bar.close()
        self.bar = None


def main(argv: list[str]) -> int:
    console = Console()
    stop = StopOnSignal()
    if hasattr(signal, "SIGXFSZ"):  # a file-size limit: let the write fail with an error we can explain
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    try:
        args = parse_args(argv)
        cfg, point = load_config(args)
        train(cfg, resume=point, overwrite=args.overwrite, on_event=console, should_stop=stop)
    except Interrupted as e:
        console.close()
        if os.environ.get("RANK", "0") == "0":  # under torchrun every process stops; the main one says so
            print(f"interrupted: {e}", file=sys.stderr)
        return stop.exit_code
    except (ConfigError, DataError, CheckpointError, RunDirError) as e:
        console.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TrainingError, OutputError) as e:
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
