"""docs/architecture.md cites real code: every `path.py: Name` exists, and every setting it names is valid.

A citation is `path/to/file.py: Name` (a module-level class, function or assignment) or
`path/to/file.py: Class.attr` (a method or class attribute defined in that class's body, an attribute
its __init__ assigns as self.attr, or either of those in a base class defined in the same file).
A setting is `key: value` with key a config field.
"""

from __future__ import annotations

import ast
import re
from functools import lru_cache
from pathlib import Path

from lm import config

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "architecture.md"

CITATION = re.compile(r"`([\w./-]+\.py): ([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)?)`")
SETTING = re.compile(r"`(\w+): ([^`]+)`")

# settings whose values are names from a fixed list: the guide must show each of them
NAMED_VALUES = {"pos_encoding": config.POS_ENCODINGS, "attention": config.ATTENTIONS,
                "norm_placement": config.NORM_PLACEMENTS, "lr_schedule": config.LR_SCHEDULES,
                "task": config.TASKS, "grid_op": config.GRID_OPS, "dtype": config.DTYPES, "norm": config.NORMS,
                "activation": config.ACTIVATIONS, "optimizer": config.OPTIMIZERS}
MUST_DOCUMENT = ("pos_encoding", "attention", "norm_placement", "lr_schedule", "norm", "activation", "optimizer")

MUST_CITE = {
    "lm/nn/differential.py": {"DifferentialAttention", "DifferentialAttention.lambda_full",
                              "DifferentialAttention._attend"},
    "lm/nn/position.py": {"Rotation", "RotaryPositional.rotation", "SinusoidalPositional", "LearnedPositional",
                          "RandomizedPositional", "Learned2DPositional", "Sinusoidal2DPositional",
                          "Rotary2DPositional"},
    "lm/nn/attention.py": {"MultiHeadAttention", "MultiHeadAttention._attend", "build_mask", "KVCache.append"},
    "lm/nn/block.py": {"Block", "FeedForward", "Block.forward", "make_norm"},
    "lm/nn/models.py": {"Embedder.forward", "Encoder.forward", "EncoderDecoder", "EncoderDecoder.decode", "GPT",
                        "init_weights", "GPT.flops_per_token", "make_model"},
    "lm/nn/loss.py": {"token_loss"},
    "lm/trainer.py": {"lr_at", "train_step"},
    "lm/optim.py": {"make_optimizer", "muon_parameters"},
    "lm/generate.py": {"greedy_decode", "beam_search", "length_penalty"},
}
MIN_CITATIONS = 30


def citations(text: str) -> list[tuple[str, str]]:
    """Every (path, name) cited in text, in order of appearance (repeats included)."""
    return CITATION.findall(text)


def settings(text: str) -> list[tuple[str, str]]:
    """Every (key, value) setting written in text."""
    return [(k, v.strip()) for k, v in SETTING.findall(text)]


def _targets(node: ast.AST) -> list[str]:
    """Names bound by an assignment statement (plain, annotated or augmented), tuples unpacked."""
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    else:
        return []
    names, stack = [], list(targets)
    while stack:
        t = stack.pop()
        if isinstance(t, ast.Name):
            names.append(t.id)
        elif isinstance(t, (ast.Tuple, ast.List)):
            stack.extend(t.elts)
    return names


def _self_attributes(func: ast.FunctionDef) -> set[str]:
    """Attributes a method assigns on self: self.x = ..., self.x, self.y = ..., self.x: T = ..."""
    out = set()
    for node in ast.walk(func):
        targets = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
            targets = [node.target]
        stack = list(targets)
        while stack:
            t = stack.pop()
            if isinstance(t, (ast.Tuple, ast.List)):
                stack.extend(t.elts)
            elif isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                out.add(t.attr)
    return out


@lru_cache(maxsize=None)
def definitions(path: str) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """(module-level names, {class name: its members, inherited ones from same-file bases included})."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    top: set[str] = set()
    own: dict[str, set[str]] = {}
    bases: dict[str, list[str]] = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            top.add(node.name)
        top.update(_targets(node))
        if isinstance(node, ast.ClassDef):
            members: set[str] = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    members.add(item.name)
                    if item.name == "__init__":
                        members |= _self_attributes(item)
                members.update(_targets(item))
            own[node.name] = members
            bases[node.name] = [b.id for b in node.bases if isinstance(b, ast.Name)]

    def members_of(cls: str, seen: frozenset[str] = frozenset()) -> frozenset[str]:
        out = set(own.get(cls, ()))
        for base in bases.get(cls, ()):
            if base in own and base not in seen:
                out |= members_of(base, seen | {cls})
        return frozenset(out)

    return frozenset(top), {cls: members_of(cls) for cls in own}


def missing(cited: list[tuple[str, str]]) -> list[str]:
    """The citations that do not resolve, each as 'path: Name (why)'; empty when all exist."""
    problems = []
    for path, name in dict.fromkeys(cited):  # each distinct citation once, in order
        where = f"{path}: {name}"
        if not (ROOT / path).is_file():
            problems.append(f"{where} (no file {path})")
            continue
        top, classes = definitions(path)
        head, _, attr = name.partition(".")
        if head not in top:
            problems.append(f"{where} ({head} is not defined at the top level of {path})")
        elif attr and head not in classes:
            problems.append(f"{where} ({head} is not a class in {path})")
        elif attr and attr not in classes[head]:
            problems.append(f"{where} ({head} defines no {attr})")
    return problems


def bad_settings(found: list[tuple[str, str]]) -> list[str]:
    """The settings that are not valid: unknown key, a name not in its list, or a value of the wrong type."""
    problems = []
    for key, value in found:
        if key not in config.FIELD_SECTION:
            problems.append(f"{key}: {value} (no config key {key!r})")
        elif key in NAMED_VALUES:
            if value not in NAMED_VALUES[key]:
                problems.append(f"{key}: {value} (allowed: {', '.join(NAMED_VALUES[key])})")
        else:
            try:
                config.override_value([f"--{key}={value}"], key, None)
            except config.ConfigError as e:
                problems.append(f"{key}: {value} ({e})")
    return problems


# ----------------------------------------------------------------------------- the guide


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def test_every_cited_name_exists():
    problems = missing(citations(guide()))
    assert not problems, "docs/architecture.md cites names that do not exist:\n  " + "\n  ".join(problems)


def test_the_guide_cites_enough_and_the_essentials():
    cited = citations(guide())
    assert len(set(cited)) >= MIN_CITATIONS, f"only {len(set(cited))} distinct citations; expected >= {MIN_CITATIONS}"
    absent = [f"{path}: {name}" for path, names in MUST_CITE.items() for name in sorted(names)
              if (path, name) not in cited]
    assert not absent, "docs/architecture.md does not cite:\n  " + "\n  ".join(absent)


def test_every_setting_in_the_guide_is_valid():
    found = settings(guide())
    assert found, "no `key: value` settings found in docs/architecture.md"
    problems = bad_settings(found)
    assert not problems, "docs/architecture.md names invalid settings:\n  " + "\n  ".join(problems)


def test_every_variant_is_documented():
    """A value added to POS_ENCODINGS, ATTENTIONS, NORM_PLACEMENTS or LR_SCHEDULES needs its row in the guide."""
    shown = set(settings(guide()))
    undocumented = [f"{key}: {value}" for key in MUST_DOCUMENT for value in NAMED_VALUES[key]
                    if (key, value) not in shown]
    assert not undocumented, ("docs/architecture.md has no `key: value` for these variants (add a row mapping "
                              "them to their code):\n  " + "\n  ".join(undocumented))


# ----------------------------------------------------------------------------- the checker itself


def test_checker_finds_citations_and_reports_wrong_ones():
    text = ("See `lm/nn/loss.py: token_loss`, `lm/nn/differential.py: DifferentialAttention.lambda_full`, "
            "`lm/nn/models.py: NoSuchThing`, `lm/nn/block.py: Block.no_such_method`, `lm/no_such_file.py: X`, "
            "`lm/nn/loss.py: token_loss.attr` and `lm/nn/position.py: RotaryPositional.block_size`; "
            "not `plain code`.")
    cited = citations(text)
    assert cited == [("lm/nn/loss.py", "token_loss"),
                     ("lm/nn/differential.py", "DifferentialAttention.lambda_full"),
                     ("lm/nn/models.py", "NoSuchThing"), ("lm/nn/block.py", "Block.no_such_method"),
                     ("lm/no_such_file.py", "X"), ("lm/nn/loss.py", "token_loss.attr"),
                     ("lm/nn/position.py", "RotaryPositional.block_size")]
    problems = missing(cited)
    assert [p.split(" (")[0] for p in problems] == ["lm/nn/models.py: NoSuchThing",
                                                    "lm/nn/block.py: Block.no_such_method",
                                                    "lm/no_such_file.py: X",
                                                    "lm/nn/loss.py: token_loss.attr"]
    # RotaryPositional.block_size resolves through its base Positional's __init__ (self.block_size = ...)


def test_checker_knows_every_kind_of_definition():
    top, classes = definitions("lm/nn/position.py")
    assert {"Rotation", "make_positional", "POSITIONAL", "_frequencies"} <= top  # class, function, assignment
    assert {"__call__", "cos", "sin"} <= classes["Rotation"]  # a method and self.x, self.y = ... in __init__
    assert {"name", "token_scale", "rotation", "consecutive"} <= classes["RotaryPositional"]  # own and inherited
    assert missing([("lm/config.py", "POS_ENCODINGS"), ("lm/config.py", "ModelConfig.pos_encoding")]) == []


def test_setting_checker_rejects_wrong_settings():
    assert settings("`pos_encoding: rope`, `lr: 3e-4` and `lm/nn/models.py: GPT`") == [("pos_encoding", "rope"),
                                                                                          ("lr", "3e-4")]
    assert bad_settings([("pos_encoding", "rope"), ("label_smoothing", "0.1"), ("share_embeddings", "true")]) == []
    problems = bad_settings([("pos_encoding", "alibi"), ("no_such_key", "1"), ("grad_clip", "lots")])
    assert [p.split(" (")[0] for p in problems] == ["pos_encoding: alibi", "no_such_key: 1", "grad_clip: lots"]
