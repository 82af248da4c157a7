"""Every shipped config keeps its meaning: its fully resolved settings (the file over the defaults) equal a
committed snapshot, so a change of a default that alters what a shipped config computes fails here until
the snapshot is updated on purpose:

    python tests/test_shipped_configs.py --update     # rewrites tests/snapshots/shipped_configs.json

(then re-measure what the README quotes for the configs that changed). The baseline every speed ratio is
measured against must also write out, in its own file, every setting that changes what it computes."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lm.config import FIELD_SECTION, load, load_yaml  # noqa: E402

SNAPSHOT = Path(__file__).with_name("snapshots") / "shipped_configs.json"
SHIPPED = ["config.yaml", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*.yaml"))]
BASELINE = "configs/baseline_nanogpt_cpu.yaml"
# settings that do not change what the baseline (task lm, tokenizer char, AdamW, cosine) computes: where its
# files go, how often it reports or evaluates, how batches are assembled (the same batches either way), and
# settings of other tasks, tokenizers, optimizers and schedules
NOT_COMPUTED = {"out_dir", "eval_interval", "eval_iters", "log_interval", "num_workers", "tokenizer_file",
                "tokenizer_sample", "grid_op", "num_symbols", "min_len", "max_len", "eval_long_len",
                "held_out_size", "share_embeddings", "muon_lr", "decay_fraction", "vocab_size", "noise_rate",
                "noise_edits", "train_noise_rate", "misspelling_rate", "correction_filter", "copy_margin", "cross_rope",
                "logger", "show_examples", "keep_every", "keep_every_epoch", "keep_last", "graph_op", "graph_family",
                "mean_degree", "max_hops"}


def resolved() -> dict[str, dict]:
    return {path: load(ROOT / path).to_dict() for path in SHIPPED}


def differences(old: dict, new: dict) -> list[str]:
    out = []
    for path in sorted(set(old) | set(new)):
        if path not in old or path not in new:
            out.append(f"{path}: {'new' if path not in old else 'removed'}")
            continue
        for section in new[path]:
            for key in sorted(set(old[path].get(section, {})) | set(new[path][section])):
                a, b = old[path].get(section, {}).get(key, "<absent>"), new[path][section].get(key, "<absent>")
                if a != b:
                    out.append(f"{path}: {section}.{key} was {a!r}, is now {b!r}")
    return out


def test_every_shipped_config_resolves_to_its_snapshot():
    saved = json.loads(SNAPSHOT.read_text(encoding="utf-8"))
    changed = differences(saved, resolved())
    assert not changed, ("a shipped config no longer means what it did (a default or the file changed):\n  "
                         + "\n  ".join(changed) + "\nIf that is on purpose, run `python tests/test_shipped_configs.py "
                         "--update` and re-measure what the README quotes for those configs.")


def test_the_baseline_writes_out_every_setting_that_changes_what_it_computes():
    raw = load_yaml(ROOT / BASELINE)
    named = {key for section in raw.values() for key in section} if all(isinstance(v, dict) for v in raw.values()) \
        else set(raw)
    missing = sorted(set(FIELD_SECTION) - NOT_COMPUTED - named)
    assert not missing, f"{BASELINE} leaves these settings to the defaults: {missing}"
    cfg = load(ROOT / BASELINE)
    t, m = cfg.train, cfg.model
    assert (t.optimizer, t.dtype, t.compile, t.device) == ("adamw", "float32", False, "cpu")
    assert (m.norm, m.activation, m.qk_norm, m.tie_head, m.zero_init) == ("layernorm", "gelu", False, True, False)


@pytest.mark.parametrize("path", [p for p in SHIPPED if p.startswith("configs/") and p != BASELINE
                                  and load(ROOT / p).data.task != "lm"])
def test_every_task_config_names_its_optimizer(path):
    """The seq2seq configs inherited a changed default optimizer once, silently: each now names its own."""
    raw = load_yaml(ROOT / path)
    assert "optimizer" in raw.get("train", raw), f"{path} does not name its optimizer"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit(f"usage: python {Path(__file__).relative_to(ROOT)} --update")
    SNAPSHOT.parent.mkdir(exist_ok=True)
    SNAPSHOT.write_text(json.dumps(resolved(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {SNAPSHOT.relative_to(ROOT)} ({len(SHIPPED)} configs)")
