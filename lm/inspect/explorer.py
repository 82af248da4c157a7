"""An offline, self-contained page for exploring a model's attention weights.

explorer_html(data) puts the attention maps of one example (the dict visualize.py also saves as
attention.json), or of one example at several checkpoints, into the page template
lm/inspect/explorer.html: one HTML file with its CSS, its script and its data inline, that opens from
file:// and makes no network request of any kind.

The page shows one map at a time as a heatmap, rows the queries and columns the keys, each labelled
with its token (space, newline and tab drawn as ␣ ↵ ⇥), picked by kind (encoder self-, decoder self-
or cross-attention), layer and head. Hovering a cell reads out its query, its key and the weight; all
heads of the layer are drawn small beside it, each captioned with its mean attention distance and
entropy, and clicking one opens it. With several checkpoints a slider picks the checkpoint (its step
and label shown beside it); the kind, layer and head stay. Colours mean the same on every map of the
page (every checkpoint's too): white to dark blue from 0 to the largest weight, or, when any weight is
negative or config["attention"] is "differential", blue through white to red, symmetric around 0.

data, one example:
    kind        "lm", "seq2seq" or "graph"
    tokens      lm: one list (queries and keys); seq2seq: {"source": [...], "target": [...]}; graph:
                one list, the nodes
    attentions  {kind: [layer][head][query][key]} for the kinds the model has: encoder_self
                (source x source), decoder_self (target x target, or tokens x tokens), cross
                (target x source); an lm has decoder_self only, a graph encoder_self only
    stats       optional: {kind: {"distance": [layer][head], "entropy": [layer][head]}}, each head's
                mean attention distance (positions) and mean row entropy (nats), shown under its
                thumbnail (lm.inspect.attention_maps.head_stats)
    config      plain JSON: the model's settings, shown as the page's summary line and table
    output      optional: the seq2seq model's decoded output (a graph's answers), shown under the summary
    mask        optional (graph): [query][key] 1 where attention may go, 0 where the mask forbids it (no
                edge): such cells are drawn grey
    view        optional: {"layer": L, "head": H}, the map the page opens on (default 0, 0)

data, several checkpoints of one model:
    frames      a list of the above (without view), one per checkpoint in step order, each with
                "step" (int) and "label" (e.g. "step 300 · exact 87.0%"); every frame has its own
                tokens (a seq2seq model's output, and so its target tokens, differ between steps)
                but the same kinds, layers and heads
    view        optional, as above
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import write_text_atomic

TEMPLATE = Path(__file__).with_name("explorer.html")
PLACEHOLDER = "__ATTENTION_DATA__"

# (queries, keys) of each kind of attention, as keys of a seq2seq example's tokens
SIDES = {"encoder_self": ("source", "source"), "decoder_self": ("target", "target"), "cross": ("target", "source")}

# Inside <script> the JSON must never contain "</script" or "<!--": written as JSON escapes instead,
# these characters read back the same. (U+2028/U+2029 are escaped too, for any JavaScript reader.)
_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def _check_example(data: dict) -> None:
    """Raise ValueError unless every map has one row per query token and one column per key token, and
    the stats (where present) one number per layer and head."""
    kind, tokens, attentions = data["kind"], data["tokens"], data["attentions"]
    if kind not in ("lm", "seq2seq", "graph"):
        raise ValueError(f"kind is {kind!r}: it must be 'lm', 'seq2seq' or 'graph'")
    allowed = {"lm": ("decoder_self",), "graph": ("encoder_self",)}.get(kind, tuple(SIDES))
    if not attentions or set(attentions) - set(allowed):
        raise ValueError(f"attentions has {sorted(attentions)}: a {kind} page shows some of {list(allowed)}")
    flat = kind in ("lm", "graph")  # one list of tokens (nodes) for queries and keys
    mask = data.get("mask")
    if mask is not None and (len(mask) != len(tokens) or any(len(row) != len(tokens) for row in mask)):
        raise ValueError(f"mask must be {len(tokens)} x {len(tokens)} (nodes x nodes)")
    for name, layers in attentions.items():
        rows, cols = (tokens, tokens) if flat else (tokens[SIDES[name][0]], tokens[SIDES[name][1]])
        for layer in layers:
            for head in layer:
                if len(head) != len(rows) or any(len(row) != len(cols) for row in head):
                    raise ValueError(f"each {name} map must be {len(rows)} x {len(cols)} (queries x keys)")
    for name, stats in data.get("stats", {}).items():
        heads = [len(layer) for layer in attentions.get(name, [])]
        for what in ("distance", "entropy"):
            if [len(layer) for layer in stats.get(what, [])] != heads:
                raise ValueError(f"stats[{name!r}][{what!r}] must have one number per layer and head of {name} "
                                 f"({' + '.join(map(str, heads)) or 'no heads'})")


def _shape(data: dict) -> dict:
    """kind -> heads per layer: what every frame of a page must share."""
    return {name: [len(layer) for layer in layers] for name, layers in data["attentions"].items()}


def _check(data: dict) -> None:
    """_check_example for one example, or for every frame, which must all have one kind, kinds, layers and heads."""
    if "frames" not in data:
        return _check_example(data)
    frames = data["frames"]
    if not isinstance(frames, list) or not frames:
        raise ValueError("frames must be a non-empty list (one example per checkpoint)")
    for i, frame in enumerate(frames):
        _check_example(frame)
        if not isinstance(frame.get("step"), int) or not isinstance(frame.get("label"), str):
            raise ValueError(f"frame {i} needs a step (an int) and a label (a string); it has step "
                             f"{frame.get('step')!r}, label {frame.get('label')!r}")
        if (frame["kind"], _shape(frame)) != (frames[0]["kind"], _shape(frames[0])):
            raise ValueError(f"frame {i} (step {frame['step']}) is not of the same model as frame 0 (step "
                             f"{frames[0]['step']}): its kind, kinds of attention, layers or heads differ")


def explorer_html(data: dict) -> str:
    """The page, with data embedded as JSON in <script type="application/json" id="attention-data">.
    Raises ValueError for maps whose shapes do not match the tokens, frames of different models, and for
    NaN or infinite weights."""
    _check(data)
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    for char, escape in _ESCAPES.items():
        text = text.replace(char, escape)
    before, after = TEMPLATE.read_text(encoding="utf-8").split(PLACEHOLDER)
    return before + text + after


def write_explorer(data: dict, path: str | Path) -> None:
    """Write explorer_html(data) to path atomically (a reader never sees half a page)."""
    write_text_atomic(path, explorer_html(data))
