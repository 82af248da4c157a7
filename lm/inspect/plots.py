"""PNG plots with matplotlib: attention heatmaps and loss curves.

Attention (from an lm.inspect.attention_maps.AttentionRecord), tokens as axis labels, queries as rows:
    plot_head       one head of one layer
    plot_layer      every head of one layer, side by side
    plot_overview   every layer (rows) and head (columns)
    plot_strip      one head across checkpoints (Frames), with its distance and entropy against step
Weights in [0, 1] use a sequential scale from 0; signed weights (differential attention) a
diverging one centred on 0. Task graph's cells that its mask forbids (no edge) are grey.

Training (from the records of metrics.jsonl):
    plot_run        loss.png of one run: train and validation loss against step and against
                    training time (evaluation excluded), and exact match for seq2seq tasks
    plot_runs       several runs' curves overlaid, one colour each

Figures are built without pyplot (no global state, no display needed) and written atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from ..files import write_atomic

VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}  # whitespace drawn as a visible sign
MAX_LABELS = 48  # a longer axis labels every n-th token only


def plain(text: str) -> str:
    """Text matplotlib shows as it is: '$' would start mathtext, a leading '_' hides a legend entry."""
    text = text.replace("$", r"\$")
    return " " + text if text.startswith("_") else text


def token_label(token: str) -> str:
    return plain("".join(VISIBLE.get(ch, ch) for ch in token))


def _save(fig: Figure, path: str | Path, dpi: int = 100) -> Figure:
    """Write fig as a PNG atomically; returns it (tests read what was drawn)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    write_atomic(path, lambda f: f.write(buf.getvalue()))
    return fig


# ----------------------------------------------------------------------------- attention

def _colours(*records) -> tuple[str, Normalize]:
    """One colour scale for every map of the records, so maps can be compared: 0..max, or -m..m if signed."""
    top = max(float(np.abs(m).max()) for r in records for m in r.maps.values()) or 1.0
    if any(r.signed for r in records):
        return "RdBu_r", Normalize(-top, top)
    return "Blues", Normalize(0.0, top)


def _ticks(ax, axis: str, tokens: list[str], fontsize: float) -> None:
    step = max(1, math.ceil(len(tokens) / MAX_LABELS))
    where = list(range(0, len(tokens), step))
    labels = [token_label(tokens[i]) for i in where]
    if axis == "x":
        ax.set_xticks(where, labels, fontsize=fontsize, rotation=90)
    else:
        ax.set_yticks(where, labels, fontsize=fontsize)


MASKED = "#bebebe"  # the colour of a cell the attention mask forbids (task graph: no edge)


def _masked(record, kind: str) -> np.ndarray | None:
    """The cells to draw as masked: task graph's encoder_self, where the mask (adjacency + self-loops) is
    False; None for everything else (masked keys there, future or padding, are simply weight 0)."""
    return ~record.mask if record.mask is not None and kind == "encoder_self" else None


def _heatmap(ax, weights: np.ndarray, queries: list[str], keys: list[str], cmap: str, norm: Normalize,
             labels: bool = True, fontsize: float = 8, masked: np.ndarray | None = None):
    """weights (T_q, T_k) as an image; masked: (T_q, T_k) bool, cells drawn in MASKED grey whatever their weight."""
    if masked is not None:
        weights = np.ma.masked_array(weights, mask=masked)
        cmap = matplotlib.colormaps[cmap].with_extremes(bad=MASKED)
    image = ax.imshow(weights, cmap=cmap, norm=norm, interpolation="nearest", aspect="auto")
    if labels:
        _ticks(ax, "x", keys, fontsize)
        _ticks(ax, "y", queries, fontsize)
        ax.tick_params(length=0)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    return image


def _axis_names(record, kind: str) -> tuple[str, str]:
    """(query axis, key axis) titles."""
    if record.kind == "lm":
        return "query (token)", "key (token)"
    if record.kind == "graph":
        return "node (query)", "node (key; grey: no edge, masked)"
    return {"encoder_self": ("source (query)", "source (key)"),
            "decoder_self": ("decoder input (query)", "decoder input (key)"),
            "cross": ("decoder input (query)", "source (key)")}[kind]


def _title(record, kind: str) -> str:
    c = record.config
    return f"{c['task']}: {kind.replace('_', ' ')} attention ({c['attention']}, {c['pos_encoding']})"


def plot_head(record, kind: str, layer: int, head: int, path: str | Path) -> Figure:
    """One head: a T_q x T_k heatmap with its colour bar."""
    weights = record.maps[kind][layer, head]  # (T_q, T_k)
    queries, keys = record.axes(kind)
    cmap, norm = _colours(record)
    side = min(12.0, max(4.0, 0.22 * max(len(queries), len(keys)) + 2))
    fig = Figure(figsize=(side + 1, side))
    ax = fig.add_subplot()
    image = _heatmap(ax, weights, queries, keys, cmap, norm, masked=_masked(record, kind))
    ylabel, xlabel = _axis_names(record, kind)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{_title(record, kind)}\nlayer {layer}, head {head}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return _save(fig, path)


def _grid(record, kind: str, cells: list[tuple[int, int]], ncols: int, labels: bool, path, title: str) -> Figure:
    queries, keys = record.axes(kind)
    cmap, norm = _colours(record)
    nrows = math.ceil(len(cells) / ncols)
    size = 3.2 if labels else 1.6
    fig = Figure(figsize=(size * ncols + 1, size * nrows + 0.8))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    image = None
    for ax, (layer, head) in zip(axes.flat, cells):
        image = _heatmap(ax, record.maps[kind][layer, head], queries, keys, cmap, norm, labels=labels,
                         fontsize=6 if labels else 0, masked=_masked(record, kind))
        ax.set_title(f"layer {layer} head {head}", fontsize=8)
    for ax in axes.flat[len(cells):]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.6)
    return _save(fig, path)


def plot_layer(record, kind: str, layer: int, path: str | Path) -> Figure:
    """Every head of one layer, four to a row."""
    heads = record.maps[kind].shape[1]
    return _grid(record, kind, [(layer, h) for h in range(heads)], min(4, heads), True, path,
          f"{_title(record, kind)}: layer {layer}, all heads")


def plot_overview(record, kind: str, path: str | Path) -> Figure:
    """Every layer (a row each) and head (a column each), small and unlabelled."""
    layers, heads = record.maps[kind].shape[:2]
    return _grid(record, kind, [(l, h) for l in range(layers) for h in range(heads)], heads, False, path,
          f"{_title(record, kind)}: every layer and head")


STRIP_LABELLED = 8  # a strip of more checkpoints than this draws its heatmaps smaller, without token labels


def plot_strip(frames, kind: str, layer: int, head: int, path: str | Path) -> Figure:
    """One head across checkpoints (lm.inspect.attention_maps.Frame, in the order given): a heatmap per
    checkpoint, left to right, titled with its label and captioned with the head's mean attention distance
    and entropy (attention_maps.head_stats); below them, both against step. One colour scale for all."""
    n = len(frames)
    cmap, norm = _colours(*(f.record for f in frames))
    labels = n <= STRIP_LABELLED
    side = 3.0 if labels else 1.8
    stats = [f.record.stats()[kind] for f in frames]
    distance = [float(d[layer, head]) for d, _ in stats]
    entropy = [float(h[layer, head]) for _, h in stats]
    fig = Figure(figsize=(side * n + 1.5, side + 3.0))
    grid = fig.add_gridspec(2, n, height_ratios=[side, 2.0], hspace=0.45 if labels else 0.3)
    maps, image = [], None
    for i, frame in enumerate(frames):
        ax = fig.add_subplot(grid[0, i])
        queries, keys = frame.record.axes(kind)
        image = _heatmap(ax, frame.record.maps[kind][layer, head], queries, keys, cmap, norm, labels=labels,
                         fontsize=6, masked=_masked(frame.record, kind))
        ax.set_title(plain(frame.label), fontsize=8)
        ax.set_xlabel(f"distance {distance[i]:.2f} · entropy {entropy[i]:.2f}", fontsize=7)
        maps.append(ax)
    fig.colorbar(image, ax=maps, shrink=0.8, pad=0.02)
    steps = [f.step for f in frames]
    ax = fig.add_subplot(grid[1, :])
    drawn = ax.plot(steps, distance, "o-", color="tab:blue", label="mean distance (positions)")
    if labels:
        ax.set_xticks(sorted(set(steps)))  # a tick at every checkpoint
    ax.set_xlabel("step")
    ax.set_ylabel("distance (positions)", color="tab:blue")
    ax.grid(alpha=0.3)
    twin = ax.twinx()
    drawn += twin.plot(steps, entropy, "s--", color="tab:orange", label="mean entropy (nats)")
    twin.set_ylabel("entropy (nats)", color="tab:orange")
    ax.legend(handles=drawn, fontsize=7, loc="best")
    fig.suptitle(f"{_title(frames[0].record, kind)}: layer {layer}, head {head}, across checkpoints", fontsize=10)
    return _save(fig, path)


# ----------------------------------------------------------------------------- loss curves

def _series(records: list[dict], x: str, y: str) -> tuple[list[float], list[float]]:
    """(x, y) of the records that have both. The final record has val_loss (and train_loss) only when
    the last step was not on the eval_interval: its evaluation then belongs on the curve."""
    points = [(r[x], r[y]) for r in records if r.get(x) is not None and r.get(y) is not None]
    return [p[0] for p in points], [p[1] for p in points]


def _exact_keys(records: list[dict]) -> list[str]:
    return [k for k in ("val_exact", "long_exact") if any(k in r for r in records)]


def plot_run(records: list[dict], path: str | Path, title: str = "") -> Figure:
    """loss.png: train and validation loss against step and against training time; exact match too
    (seq2seq tasks); the final evaluation (whole validation split) as a marker at the last step."""
    exact = _exact_keys(records)
    fig = Figure(figsize=(5.5 * (3 if exact else 2), 4))
    axes = fig.subplots(1, 3 if exact else 2, squeeze=False)[0]
    final = next((r for r in reversed(records) if r.get("final")), None)
    for ax, x, xlabel in ((axes[0], "step", "step"), (axes[1], "elapsed_s", "training time (s)")):
        ax.plot(*_series(records, x, "train_loss"), label="train", color="tab:blue", alpha=0.8)
        ax.plot(*_series(records, x, "val_loss"), "o-", label="validation", color="tab:orange", markersize=3)
        if final and "final_val_loss" in final and x in final:
            ax.plot([final[x]], [final["final_val_loss"]], "*", color="tab:red", markersize=10,
                    label=f"final validation {final['final_val_loss']:.4f}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if exact:
        for key in exact:
            ax = axes[2]
            ax.plot(*_series(records, "step", key), "o-", markersize=3,
                    label={"val_exact": "held-out", "long_exact": "held-out, longer"}[key])
        ax.set_xlabel("step")
        ax.set_ylabel("exact match")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(plain(title), fontsize=10)
    return _save(fig, path)


def plot_runs(runs: list[tuple[str, list[dict]]], path: str | Path) -> Figure:
    """Several runs (label, records) overlaid: validation loss (solid) and train loss (faint) against
    step and against training time."""
    fig = Figure(figsize=(13, 4.8))
    axes = fig.subplots(1, 2)
    colours = [f"C{i % 10}" for i in range(len(runs))]
    for (label, records), colour in zip(runs, colours):
        for ax, x in zip(axes, ("step", "elapsed_s")):
            ax.plot(*_series(records, x, "train_loss"), color=colour, alpha=0.3, linewidth=1)
            ax.plot(*_series(records, x, "val_loss"), "o-", color=colour, markersize=3, label=plain(label))
    for ax, xlabel in zip(axes, ("step", "training time (s)")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("loss (solid: validation, faint: train)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, loc="upper right")
    return _save(fig, path)
