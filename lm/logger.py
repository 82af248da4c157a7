"""TensorBoard event files for a run (``logger: tensorboard``), beside metrics.jsonl.

The events live in ``out_dir/tensorboard/`` and say what metrics.jsonl says, under the same names:

    scalars   every number of every metrics line, tag = its metrics.jsonl key (train_loss, val_loss,
              lr, lr_muon, grad_norm, tokens_per_sec, val_exact, val_token_acc, final_val_loss, ...)
              at the line's step: one value per tag and step, as in metrics.jsonl
    hparams   the run's settings (config keys as section.name) with final_val_loss and, for a seq2seq
              task, final_val_exact as their metrics, so the HPARAMS view lists the run from its
              first step and fills the metrics in at its end
    images    attention/KIND at each evaluation: every layer and head of the model on one fixed input
              (the first example shown, lm.jobs' examples)
    text      examples at each evaluation: the examples shown in the console, as a markdown list

A resumed run (resume_step) opens its writer with purge_step = resume_step + 1: TensorBoard's readers
then drop the events an interrupted run wrote after its checkpoint, so N steps + resume + N steps read
back like one run of 2N steps. Only the main process of a data-parallel run makes a TensorBoardLog.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .config import ConfigError

EVENTS_DIR = "tensorboard"  # under out_dir; removed with the run's other files by --overwrite


class TensorBoardLog:
    """The run's event writer (torch.utils.tensorboard.SummaryWriter): one call per kind of record."""

    def __init__(self, out_dir: Path, resume_step: int | None):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # the tensorboard package is missing
            raise ConfigError(f"logger: tensorboard needs the tensorboard package (pip install -r requirements.txt), "
                              f"or use logger: none ({e})") from None
        self.dir = out_dir / EVENTS_DIR
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(self.dir), purge_step=purge, flush_secs=30)

    def hparams(self, config: dict, task: str) -> None:
        """The run's settings, flattened to section.name (None as "null", anything else not a number,
        string or bool as its text), with the final metrics they are compared by."""
        from torch.utils.tensorboard.summary import hparams

        flat = {}
        for section, values in config.items():
            for name, value in values.items():
                ok = isinstance(value, (bool, int, float, str))
                flat[f"{section}.{name}"] = value if ok else ("null" if value is None else str(value))
        metrics = {"final_val_loss": 0.0}
        if task != "lm":
            metrics["final_val_exact"] = 0.0
        experiment, start, _ = hparams(flat, metrics)
        self.writer.file_writer.add_summary(experiment)
        self.writer.file_writer.add_summary(start)

    def scalars(self, record: dict) -> None:
        """Every number of a metrics line, at its step."""
        for key, value in record.items():
            if key in ("step", "world_size") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            self.writer.add_scalar(key, value, record["step"])

    def examples(self, step: int, text: str) -> None:
        self.writer.add_text("examples", text, step)

    def attention(self, step: int, record) -> None:
        """The overview image (every layer and head) of each kind of attention in an AttentionRecord."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        from .inspect import plots

        with tempfile.TemporaryDirectory() as tmp:
            for kind in record.maps:
                path = Path(tmp) / f"{kind}.png"
                plots.plot_overview(record, kind, path)
                with Image.open(path) as png:
                    width, height = png.size
                image = Summary.Image(height=height, width=width, colorspace=4, encoded_image_string=path.read_bytes())
                self.writer.file_writer.add_summary(Summary(value=[Summary.Value(tag=f"attention/{kind}",
                                                                                 image=image)]), step)

    def end(self) -> None:
        """The hparams session's end (status success), after the final metrics."""
        from torch.utils.tensorboard.summary import hparams

        _, _, end = hparams({}, {})
        self.writer.file_writer.add_summary(end)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()
