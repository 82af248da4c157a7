"""Every model kind and variant on fixed seeds: parameters and logits, saved or compared bit for bit.

A refactor that "changes no behaviour" must leave these unchanged. Save them at the commit before
the change, then check the working tree against them:

    git worktree add /tmp/before <commit>
    python tests/logits_snapshot.py --repo /tmp/before --save /tmp/logits.pt
    python tests/logits_snapshot.py --check /tmp/logits.pt

Each case builds a model from a seed and records its parameters (by name; --rename maps old names to
new ones when they moved), the logits of an evaluation forward (fused attention), of a forward that
returns the attention maps (the explicit path) and the maps themselves, of decoding one token at a time
with the key/value cache, and of a training-mode forward with dropout drawn from a fixed seed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

VOCAB, BLOCK, B, T, S = 13, 24, 3, 9, 7

VARIANTS = [
    {},
    {"pos_encoding": "sinusoidal"},
    {"pos_encoding": "rope"},
    {"pos_encoding": "none"},
    {"pos_encoding": "randomized"},
    {"pos_encoding": "learned_2d"},
    {"pos_encoding": "sinusoidal_2d"},
    {"pos_encoding": "rope_2d"},
    {"attention": "differential"},
    {"attention": "differential", "pos_encoding": "rope", "norm_placement": "post"},
    {"norm_placement": "post"},
    {"norm": "rmsnorm"},
    {"qk_norm": True},
    {"qk_norm": True, "pos_encoding": "rope", "attention": "differential"},
    {"activation": "relu2"},
    {"tie_head": False},
    {"tie_head": False, "zero_init": True},
    {"zero_init": True},
    {"bias": False, "norm": "rmsnorm"},
    {"share_embeddings": False},
    {"dropout": 0.1},
    {"dropout": 0.1, "attention": "differential"},
]
KINDS = ("gpt", "encoder", "encoder_decoder")


def first(out):
    """The logits (or states) of a forward, whatever else it returns."""
    return out[0] if isinstance(out, tuple) else out


def maps_of(out) -> dict:
    """The attention maps in a forward's result, by kind and layer."""
    for item in out[1:] if isinstance(out, tuple) else ():
        if item is not None and hasattr(item, "kinds"):
            return {f"{k}.{i}": w for k, ws in item.kinds().items() for i, w in enumerate(ws)}
    return {}


def positions(name: str, g: torch.Generator, length: int, source: bool):
    """(B, length, ...) positions an encoding needs, or None for the model's default."""
    if name in ("learned_2d", "sinusoidal_2d", "rope_2d"):
        return torch.randint(0, 6, (B, length, 2), generator=g)
    if name == "randomized":
        start = torch.stack([torch.randperm(BLOCK, generator=g)[:length].sort().values for _ in range(B)])
        end = start.flip(1) if source else torch.full_like(start, -1)
        return torch.stack([start, end], dim=-1)  # (B, length, 2)
    return None


def case(kind: str, settings: dict) -> dict:
    from lm.config import ModelConfig
    from lm.nn import GPT, Encoder, EncoderDecoder

    cfg = ModelConfig(block_size=BLOCK, num_blocks=2, num_heads=4, embedding_dim=32, vocab_size=VOCAB, **settings)
    torch.manual_seed(1234)
    model = {"gpt": GPT, "encoder": Encoder, "encoder_decoder": EncoderDecoder}[kind](cfg).eval()
    g = torch.Generator().manual_seed(99)
    src = torch.randint(0, VOCAB, (B, S), generator=g)
    tgt = torch.randint(0, VOCAB, (B, T), generator=g)
    src_mask = torch.ones(B, S, dtype=torch.bool)
    src_mask[1, 5:] = False
    src_mask[2, 3:] = False
    src_pos = positions(cfg.pos_encoding, g, S, source=True)
    tgt_pos = positions(cfg.pos_encoding, g, T, source=kind == "encoder")
    out = {"params": {k: v.clone() for k, v in model.state_dict().items()}}

    def forward(return_weights: bool = False):
        if kind == "gpt":
            return model(tgt, pos=tgt_pos, return_weights=return_weights)
        if kind == "encoder":
            return model(src, src_mask, pos=src_pos, return_weights=return_weights)
        return model(src, tgt, src_mask, src_pos=src_pos, tgt_pos=tgt_pos, return_weights=return_weights)

    with torch.no_grad():
        out["logits"] = first(forward())
        weighed = forward(return_weights=True)
        out["logits_explicit"] = first(weighed)
        out["maps"] = maps_of(weighed)
        if kind != "encoder":
            cache, steps = model.new_cache(), []
            memory = model.encode(src, src_mask, pos=src_pos) if kind == "encoder_decoder" else None
            for i in range(T):
                pos = None if tgt_pos is None else tgt_pos[:, i : i + 1]
                if kind == "gpt":
                    steps.append(first(model(tgt[:, i : i + 1], cache=cache, pos=pos)))
                else:
                    steps.append(first(model.decode(tgt[:, i : i + 1], memory, src_mask, cache=cache, pos=pos)))
            out["logits_cached"] = torch.cat(steps, dim=1)
        if cfg.dropout:
            model.train()
            torch.manual_seed(7)
            out["logits_train"] = first(forward())
    return out


def collect() -> dict:
    return {f"{kind} {settings}": case(kind, settings) for kind in KINDS for settings in VARIANTS
            if not (kind != "encoder_decoder" and "share_embeddings" in settings)}


def compare(saved: dict, now: dict, rename: dict[str, str]) -> list[str]:
    """Every difference, bit for bit, between two collections (old parameter names mapped by rename)."""
    problems = []
    if saved.keys() != now.keys():
        problems.append(f"cases differ: {sorted(saved.keys() ^ now.keys())}")
    for name in saved.keys() & now.keys():
        a, b = saved[name], now[name]
        params = {rename.get(k, k): v for k, v in a["params"].items()}
        if params.keys() != b["params"].keys():
            problems.append(f"{name}: parameter names differ: {sorted(params.keys() ^ b['params'].keys())}")
        for k in params.keys() & b["params"].keys():
            if not torch.equal(params[k], b["params"][k]):
                problems.append(f"{name}: parameter {k} differs")
        for k in ("logits", "logits_explicit", "logits_cached", "logits_train"):
            if (k in a) != (k in b) or (k in a and not torch.equal(a[k], b[k])):
                problems.append(f"{name}: {k} differs")
        if a["maps"].keys() != b["maps"].keys():
            problems.append(f"{name}: attention maps differ in kind: {sorted(a['maps'])} vs {sorted(b['maps'])}")
        for k in a["maps"].keys() & b["maps"].keys():
            if not torch.equal(a["maps"][k], b["maps"][k]):
                problems.append(f"{name}: attention map {k} differs")
    return problems


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="the checkout whose lm/ to run")
    p.add_argument("--save", help="write the collection to this file")
    p.add_argument("--check", help="compare the collection with this saved one, bit for bit")
    args = p.parse_args()
    sys.path.insert(0, args.repo)
    torch.set_num_threads(1)
    now = collect()
    if args.save:
        torch.save(now, args.save)
        print(f"saved {len(now)} cases to {args.save}")
    if args.check:
        try:  # the parameter names that changed since the saved commit, if this checkout records any
            from lm.nn.block import current_name
        except ImportError:
            current_name = str
        saved = torch.load(args.check, weights_only=True)
        names = {k for case in saved.values() for k in case["params"]}
        problems = compare(saved, now, {k: current_name(k) for k in names})
        for line in problems:
            print(line)
        print(f"{len(now)} cases: " + ("all the same, bit for bit" if not problems else f"{len(problems)} differences"))
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
