import dataclasses
import re

import pytest
import yaml

import train as train_cli
from conftest import ROOT
from lm import config
from lm.config import ConfigError

NINE_KEYS = """\
batch_size: 256
epochs: 2
lr: 3e-4
data_path: ./data/input.txt
block_size: 256
num_heads: 8
embedding_dim: 512
num_blocks: 6
num_workers: 12
"""


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_are_valid():
    config.validate(config.Config())


def test_nine_flat_keys_mean_what_they_say(tmp_path):
    cfg = config.load(write(tmp_path, NINE_KEYS))
    assert (cfg.train.batch_size, cfg.train.epochs, cfg.train.lr) == (256, 2.0, 3e-4)
    assert cfg.data.data_path == "./data/input.txt" and cfg.data.num_workers == 12
    assert (cfg.model.block_size, cfg.model.num_heads, cfg.model.embedding_dim, cfg.model.num_blocks) == (256, 8, 512, 6)
    assert cfg.train.max_iters is None  # stops by epochs only


def test_nested_and_flat_layouts_are_equivalent(tmp_path):
    flat = config.load(write(tmp_path, "lr: 0.001\nblock_size: 32\nout_dir: o\n", "a.yaml"))
    nested = config.load(write(tmp_path, "train: {lr: 0.001, out_dir: o}\nmodel: {block_size: 32}\n", "b.yaml"))
    assert flat == nested


@pytest.mark.parametrize("override,section,name,value", [
    ("--lr=3e-4", "train", "lr", 3e-4),
    ("--train.lr=1e-3", "train", "lr", 1e-3),
    ("--max_iters=7", "train", "max_iters", 7),
    ("--max_iters=null", "train", "max_iters", None),
    ("--epochs=0.5", "train", "epochs", 0.5),
    ("--data_path=some/file.txt", "data", "data_path", "some/file.txt"),
    ("--model.dropout=0.2", "model", "dropout", 0.2),
    ("--bias=false", "model", "bias", False),
    ("--device=cpu", "train", "device", "cpu"),
])
def test_overrides(override, section, name, value):
    cfg = config.load(None, [override])
    assert getattr(getattr(cfg, section), name) == value


@pytest.mark.parametrize("name,value,expected,bad,message", [
    ("data_path", "corpus/a.txt", "corpus/a.txt", " ", "data_path: ' ' is not allowed"),
    ("out_dir", "runs/a", "runs/a", " ", "out_dir: ' ' is not allowed"),
    ("max_iters", "7", 7, "0", "max_iters: 0 is not allowed"),
    ("epochs", "0.5", 0.5, "-1", "epochs: -1.0 is not allowed"),
    ("batch_size", "8", 8, "0", "batch_size: 0 is not allowed"),
    ("block_size", "32", 32, "-3", "block_size: -3 is not allowed"),
    ("lr", "1e-3", 1e-3, "abc", "lr: 'abc' is not a number"),
    ("eval_interval", "5", 5, "0", "eval_interval: 0 is not allowed"),
    ("log_interval", "3", 3, "0", "log_interval: 0 is not allowed"),
    ("seed", "7", 7, "-1", "seed: -1 is not allowed"),
    ("num_blocks", "2", 2, "0", "num_blocks: 0 is not allowed"),
    ("num_heads", "8", 8, "3", "divisible by num_heads (3)"),
    ("embedding_dim", "64", 64, "30", "embedding_dim: 30 is not allowed; it must be divisible by num_heads (4)"),
    ("dropout", "0.2", 0.2, "1.5", "dropout: 1.5 is not allowed"),
    ("device", "cpu", "cpu", "tpu", "device: 'tpu' is not allowed"),
])
def test_required_bare_names_are_overridable(name, value, expected, bad, message):
    """Each of the keys a run needs, given on train.py's command line by its bare name (as --name=value and
    as --name value), changes the resolved config from its default to the value; a bad value is refused,
    the message naming the key and the value."""
    section = config.FIELD_SECTION[name]
    assert getattr(getattr(config.Config(), section), name) != expected  # the default is another value
    for argv in ([f"--{name}={value}"], [f"--{name}", value]):
        cfg, _ = train_cli.load_config(train_cli.parse_args(argv))
        assert getattr(getattr(cfg, section), name) == expected, argv
    with pytest.raises(ConfigError, match=re.escape(message)):
        train_cli.load_config(train_cli.parse_args([f"--{name}={bad}"]))


@pytest.mark.parametrize("text,needles", [
    ("lrr: 0.1\n", ["lrr", "did you mean 'lr'"]),
    ("train: {colour: red}\n", ["train.colour", "section 'train' has"]),
    ("lr: abc\n", ["lr", "'abc'", "a number"]),
    ("batch_size: 2.5\n", ["batch_size", "2.5", "an integer"]),
    ("batch_size: 0\n", ["batch_size", "0", "positive"]),
    ("block_size: -3\n", ["block_size", "-3", "positive"]),
    ("embedding_dim: 100\nnum_heads: 3\n", ["embedding_dim", "100", "divisible by num_heads (3)"]),
    ("eval_interval: 0\n", ["eval_interval", "0", "positive"]),
    ("dropout: 1.5\n", ["dropout", "1.5", "[0, 1)"]),
    ("pos_encoding: rotary9\n", ["pos_encoding", "rotary9", "learned, sinusoidal, rope, none, randomized"]),
    ("device: tpu\n", ["device", "tpu", "auto, cpu"]),
    ("dtype: fp8\n", ["dtype", "fp8", "float32"]),
    ("lr: .inf\n", ["lr", "finite"]),
    ("val_fraction: 1.0\n", ["val_fraction", "between 0 and 1"]),
    ("tokenizer_sample: 0\n", ["tokenizer_sample", "0", "positive number of characters"]),
    ("min_lr: 1.0\nlr: 0.1\n", ["min_lr", "between 0 and lr"]),
    ("lr: 0.1\ntrain: {lr: 0.2}\n", ["set twice"]),
    ("- a\n- b\n", ["mapping"]),
    ("bias: maybe\n", ["bias", "true or false"]),
])
def test_bad_values_name_key_value_and_rule(tmp_path, text, needles):
    with pytest.raises(ConfigError) as e:
        config.load(write(tmp_path, text))
    for needle in needles:
        assert needle in str(e.value), (needle, str(e.value))


def test_python_yaml_tags_are_refused(tmp_path):
    marker = tmp_path / "marker"
    text = f"lr: !!python/object/apply:os.system ['touch {marker}']\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(write(tmp_path, text))
    assert not marker.exists()


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="--name=value"):
        config.load(None, ["--lr"])


def test_round_trip_through_plain_dict():
    cfg = config.load(None, ["--lr=0.01", "--vocab_size=65"])
    d = cfg.to_dict()
    assert yaml.safe_load(yaml.safe_dump(d)) == d  # plain values only
    assert config.from_dict(d) == cfg


def test_field_names_are_unique_across_sections():
    names = [f.name for sec in (config.DataConfig, config.ModelConfig, config.TrainConfig)
             for f in dataclasses.fields(sec)]
    assert len(names) == len(set(names))


def test_shipped_config_loads_and_documents_every_setting():
    path = ROOT / "config.yaml"
    config.load(path)
    text = path.read_text()
    for name in config.FIELD_SECTION:
        m = re.search(rf"^\s*{name}:.*$", text, flags=re.M)
        assert m, f"config.yaml does not list {name}"
        lines = text.splitlines()
        i = next(k for k, line in enumerate(lines) if re.match(rf"^\s*{name}:", line))
        assert "#" in lines[i] or lines[i - 1].strip().startswith("#"), f"{name} has no comment in config.yaml"


def yaml_comments(text: str) -> dict[str, str]:
    """The comment block just above each indented key of a sectioned YAML file, its lines joined."""
    out, comment = {}, []
    for line in text.splitlines():
        stripped = line.strip()
        if line.startswith("  ") and stripped.startswith("#"):
            comment.append(stripped[1:].strip())
            continue
        key = re.match(r"  (\w+):", line)
        if key:
            out[key.group(1)] = " ".join(comment)
        comment = []
    return out


def test_config_yaml_documents_every_key_with_its_field_doc():
    """One source for each setting's documentation: the comment above a field in lm/config.py. config.yaml
    names every key, under the comment of its field, word for word."""
    docs = {}
    for cls in (config.DataConfig, config.ModelConfig, config.TrainConfig):
        docs.update(config.field_docs(cls))
    assert set(docs) == set(config.FIELD_SECTION) and all(docs.values())
    comments = yaml_comments((ROOT / "config.yaml").read_text())
    assert set(comments) == set(docs), "config.yaml must name every key"
    assert {k: v for k, v in comments.items() if v != docs[k]} == {}


def test_field_docs_are_the_comments_above_each_field():
    docs = config.field_docs(config.TrainConfig)
    assert docs["beta1"] == "AdamW beta1"
    assert docs["max_iters"].startswith("optimizer steps; with epochs also set")  # a comment of several lines
    assert list(docs) == [f.name for f in dataclasses.fields(config.TrainConfig)]
    assert yaml_comments("train:\n  # the rate\n  # at its peak\n  lr: 1\n  seed: 2\n") == {"lr": "the rate at its peak",
                                                                                          "seed": ""}


@pytest.mark.parametrize("cls", [config.DataConfig, config.ModelConfig, config.TrainConfig])
def test_every_named_choice_is_refused_when_unknown_and_documented(cls, tmp_path):
    """A Literal field's names are its one list: each is in the field's doc (and so in config.yaml), and any
    other value is refused with an error that lists them all."""
    docs = config.field_docs(cls)
    literal = [name for name, tp in config._field_types(cls).items() if str(tp).startswith("typing.Literal")]
    assert literal
    for name in literal:
        allowed = config.choices(cls, name)
        assert all(re.search(rf"(?<![\w-]){re.escape(a)}(?![\w-])", docs[name]) for a in allowed), (name, docs[name])
        with pytest.raises(ConfigError) as e:
            config.load(None, [f"--{name}=no_such_{name}"])
        assert str(e.value) == f"{name}: 'no_such_{name}' is not allowed; choose one of: {', '.join(allowed)}"
