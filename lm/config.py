"""Typed run configuration: dataclasses loaded from YAML, with dotted overrides.

A config has three sections, ``data``, ``model`` and ``train``. Every field name is
unique across sections, so a key may be written either nested (``train: {lr: 1e-3}``,
``--train.lr=1e-3``) or bare (``lr: 1e-3``, ``--lr=1e-3``); a flat YAML file of bare
keys is as valid as a sectioned one.

Anything wrong (an unknown key, a value of the wrong type, an impossible value)
raises ``ConfigError`` naming the key, the value and what is allowed, before any
work starts.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A configuration value that cannot be used; the message says why."""


@dataclass
class DataConfig:
    # what to train on: a UTF-8 text file, a directory (every file beneath it, in path order) or a
    # glob pattern ("shards/*.txt", "corpus/**/*.txt"). A missing ".../tinyshakespeare/input.txt"
    # is downloaded; with no network, the Python documentation shipped with CPython is used instead
    # (a loud message says so).
    data_path: str = "data/tinyshakespeare/input.txt"
    # fraction of the corpus (its end) held out for validation
    val_fraction: float = 0.1
    # background processes that assemble batches (0 = in the training process)
    num_workers: int = 0
    # tasks lm and spell: char (one token per character) | bpe (byte-level BPE with vocab_size tokens,
    # trained here on the training split) | gpt2 | r50k_base | p50k_base | cl100k_base | o200k_base (tiktoken's
    # encodings: from its cache, or from tokenizer_file; no download is needed when either is there)
    tokenizer: Literal["char", "bpe", "gpt2", "r50k_base", "p50k_base", "cl100k_base", "o200k_base"] = "char"
    # a tiktoken .tiktoken rank file for tokenizer gpt2 ... o200k_base (null: tiktoken's cache)
    tokenizer_file: Optional[str] = None
    # tokenizer bpe: characters of the training split it is learned from (the whole split when shorter,
    # else evenly spaced pieces of it); bounds the time and memory of learning on a large corpus
    tokenizer_sample: int = 10_000_000
    # what to learn: lm (language modelling on data_path) | copy | reverse | sort | add | grid
    # (generated seq2seq tasks, trained on an encoder-decoder; data_path is then unused) | spell (an
    # encoder-decoder corrects the sentences of data_path, corrupted by a seeded noise model) | graph
    # (an encoder labels every node of a random graph, whose edges are its attention mask)
    task: Literal["lm", "copy", "reverse", "sort", "add", "grid", "spell", "graph"] = "lm"
    # task grid: the operation on the grid: rotate (90 degrees clockwise) | transpose | flip
    # (left-right) | gravity (coloured cells fall to the bottom of their column)
    grid_op: Literal["rotate", "transpose", "flip", "gravity"] = "rotate"
    # task graph: each node's answer: distance (hops to the marked source node, capped at max_hops) |
    # component (the smallest label in its connected component) | degree (its number of neighbours)
    graph_op: Literal["distance", "component", "degree"] = "distance"
    # task graph: the random graphs: er (Erdos-Renyi: each pair of nodes joined with probability
    # mean_degree / (nodes - 1)) | tree (random trees: each node joins a uniformly chosen earlier one, in a
    # random order) | mixed (each graph one or the other, with probability 1/2)
    graph_family: Literal["mixed", "er", "tree"] = "mixed"
    # task graph: the mean number of neighbours of a node of an er graph
    mean_degree: float = 2.0
    # task graph, graph_op distance: answers are 0..max_hops, max_hops meaning "max_hops or more, or
    # unreachable"
    max_hops: int = 4
    # tasks: number of distinct symbols (for add: the number base, 2..10; for grid: colours, 2..10)
    num_symbols: int = 10
    # tasks: shortest training sequence (for add: digits of the longer operand; for grid: the shortest
    # side, rows and columns each drawn in min_len..max_len; for spell: characters of a sentence; for
    # graph: nodes of a graph)
    min_len: int = 1
    # tasks: longest training sequence (for add: digits of the longer operand; for grid: the longest
    # side; for spell: characters of a sentence, longer ones being cut at ; : , first; for graph: nodes)
    max_len: int = 16
    # tasks: a second held-out set has lengths max_len+1 .. eval_long_len (= max_len: none; not spell;
    # for graph: larger graphs, of max_len+1 .. eval_long_len nodes)
    eval_long_len: int = 24
    # tasks: examples in each fixed held-out set (spell: sentences of the validation split, evenly spaced)
    held_out_size: int = 1000
    # task spell: the noise model's character edits per letter (each an insertion, deletion,
    # substitution by a keyboard neighbour or transposition of adjacent letters, inside one word)
    noise_rate: float = 0.05
    # task spell: exactly this many character edits per sentence instead (0 = noise_rate decides)
    noise_edits: int = 0
    # task spell: edits per letter in the training sentences (null = noise_rate); the held-out set always
    # has noise_rate (or noise_edits). More noise in training shows the model more corrections per step.
    train_noise_rate: Optional[float] = None
    # task spell: share of the words with a known human misspelling that are replaced by one (0 = none;
    # from the list in the codespell package, read at run time: pip install codespell)
    misspelling_rate: float = 0.0
    # task spell: what the model's output goes through (evaluation and sample.py): known_words (each word
    # the model changed into a non-word, one not in the training sentences, is put back as the input had
    # it) | none (the model's output as it is; evaluation reports it beside the filtered one either way)
    correction_filter: Literal["known_words", "none"] = "known_words"
    # task spell: decoding that favours the input (evaluation and sample.py): the greedy output replaces the
    # input only when the model finds it more likely by at least this many nats, log p(output | input) -
    # log p(input | input) >= copy_margin, both teacher-forced; else the input is kept as it is (null =
    # always the greedy output). Applied before correction_filter
    copy_margin: Optional[float] = None


@dataclass
class ModelConfig:
    # context length: tokens the model sees at once, and the training window length
    block_size: int = 64
    # number of transformer blocks
    num_blocks: int = 4
    # attention heads per block; must divide embedding_dim
    num_heads: int = 4
    # width of the residual stream (d_model)
    embedding_dim: int = 128
    # dropout probability on attention weights, residual branches and embeddings
    dropout: float = 0.0
    # learnable biases in linear layers and LayerNorms
    bias: bool = True
    # positions: learned | sinusoidal | rope | none | randomized (seq2seq tasks: length
    # generalisation) | learned_2d | sinusoidal_2d | rope_2d (task grid: row and column)
    pos_encoding: Literal["learned", "sinusoidal", "rope", "none", "randomized", "learned_2d", "sinusoidal_2d",
                          "rope_2d"] = "learned"
    # attention: standard | differential (Differential Transformer; needs an even num_heads)
    attention: Literal["standard", "differential"] = "standard"
    # where each block's LayerNorms sit: pre (x + f(LN(x)), GPT-2) | post (LN(x + f(x)), the original)
    norm_placement: Literal["pre", "post"] = "pre"
    # vocabulary size; set from the corpus (or task) at the start of a run, 0 = not yet known
    vocab_size: int = 0
    # encoder-decoder only: source and target share one embedding table
    share_embeddings: bool = True
    # normalisation layers: layernorm | rmsnorm (no mean subtraction, no bias)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    # normalise each head's queries and keys (RMSNorm over the head width) before their dot product
    qk_norm: bool = False
    # feed-forward activation: gelu | relu2 (ReLU squared)
    activation: Literal["gelu", "relu2"] = "gelu"
    # output head tied to the (target) token embedding; false = a separate matrix (task graph: false, its
    # head predicts answers, not tokens)
    tie_head: bool = True
    # encoder-decoder: cross-attention rotates its queries by their target positions and its keys by
    # their source positions (RoPE), so each score also depends on the offset t - s and an output that
    # runs beside its input (task spell) finds the near-diagonal alignment quickly; 1D positions only
    cross_rope: bool = False
    # start the projections that write into the residual stream (attention output, feed-forward
    # output) at zero, and an untied head too; false = GPT-2's scaled normal initialisation
    zero_init: bool = False
    # one block's weights shared by every layer of a stack: the same block applied num_blocks times
    # (as in the Universal Transformer); false = num_blocks blocks of their own
    share_blocks: bool = False


@dataclass
class TrainConfig:
    # directory for checkpoints (last.pt, best.pt), metrics.jsonl and the token cache
    out_dir: str = "out/shakespeare_char"
    # training windows per micro-batch
    batch_size: int = 64
    # micro-batches whose gradients are summed per optimizer step (effective batch = batch_size * grad_accum)
    grad_accum: int = 1
    # passes over the data; one epoch = as many windows as the training split has tokens
    epochs: Optional[float] = None
    # optimizer steps; with epochs also set, the run stops at whichever comes first. A file or
    # command line that sets epochs but not max_iters runs by epochs alone; null for both = one epoch.
    max_iters: Optional[int] = 550
    # seconds of training (run time without evaluation, metrics elapsed_s) after which the run ends, on
    # any machine; cosine and wsd then decay over the fraction of this budget used (the warm-up stays in
    # warmup_iters steps). Set in the same file or command line as max_iters or epochs, the run stops at
    # whichever is reached first, and the schedule still follows the time. A time-budgeted run cannot
    # resume bit-exactly (its schedule follows measured time). null = the run's length is in steps.
    max_time: Optional[float] = None
    # peak learning rate (AdamW)
    lr: float = 2e-3
    # adamw | muon (Muon for the blocks' weight matrices, AdamW for embeddings, head, norms and biases)
    optimizer: Literal["adamw", "muon"] = "muon"
    # peak learning rate of Muon's matrices (optimizer: muon), following the same schedule as lr
    muon_lr: float = 0.05
    # cosine (linear warm-up, cosine decay to min_lr) | noam (linear warm-up, then lr * sqrt(warmup / step))
    # | wsd (linear warm-up, constant lr, then linear decay to min_lr over the last decay_fraction of steps)
    lr_schedule: Literal["cosine", "noam", "wsd"] = "cosine"
    # lr_schedule wsd: the share of the run's steps spent decaying to min_lr
    decay_fraction: float = 0.2
    # label smoothing of the training loss (0 = none); evaluation losses are never smoothed
    label_smoothing: float = 0.0
    # learning rate at the end of the cosine decay
    min_lr: float = 2e-4
    # step at which the cosine decay reaches min_lr (null = the run's last step)
    lr_decay_iters: Optional[int] = None
    # steps of linear warm-up to lr (step s, from 0, gets lr * (s + 1) / warmup_iters)
    warmup_iters: int = 30
    # AdamW weight decay, applied to weight matrices only (not biases or norms)
    weight_decay: float = 0.1
    # AdamW beta1
    beta1: float = 0.9
    # AdamW beta2
    beta2: float = 0.99
    # clip the global gradient norm to this value (0 = no clipping)
    grad_clip: float = 1.0
    # evaluate on train and validation batches (and write last.pt, and best.pt when it improves) every
    # this many steps
    eval_interval: int = 275
    # batches per evaluation estimate
    eval_iters: int = 20
    # write a metrics line (and update the progress bar) every this many steps
    log_interval: int = 10
    # seed for initialisation, data order and dropout: an integer in 0 .. 2**63 - 1
    seed: int = 1337
    # auto | cpu | cuda | cuda:N | mps  (auto: cuda, then mps, then cpu)
    device: str = "auto"
    # auto | float32 | bfloat16 | float16 (auto: bfloat16 autocast on GPUs that support it and on CPUs
    # that compute bf16 natively (AVX512-BF16, AMX or Arm BF16), else float32; the start line says which
    # and why)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # torch.compile the model for training steps (evaluation and sampling stay eager). The first step
    # includes the compile time; where compiling is unavailable or fails, a warning says why and the
    # run trains eagerly. Checkpoints are the same either way. Off by default: in a run as short as
    # config.yaml's it costs more compile time than it saves (docs/benchmarks.md).
    compile: bool = False
    # none | tensorboard (event files in out_dir/tensorboard/: every metrics line's numbers, the settings
    # as hparams, and at each evaluation the attention overview and the shown examples; rank 0 only)
    logger: Literal["none", "tensorboard"] = "none"
    # at each evaluation, show this many held-out examples (seq2seq: input -> prediction vs target) or
    # one greedy continuation of a fixed prompt (language model) in the console and TensorBoard; 0 = off
    show_examples: int = 3
    # keep a checkpoint every this many steps as out_dir/ckpt/step_000500.pt, each step evaluated
    # (null = keep none; last.pt and best.pt are written as always)
    keep_every: Optional[int] = None
    # also keep one at the end of every epoch, as out_dir/ckpt/epoch_0003.pt (runs with epochs only)
    keep_every_epoch: bool = False
    # keep at most this many checkpoints in out_dir/ckpt/, the oldest removed first (null = all)
    keep_last: Optional[int] = None


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        """Plain nested dict (only str/int/float/bool/None), safe to store in a checkpoint."""
        return dataclasses.asdict(self)


_SECTION_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}

# bare field name -> section holding it
FIELD_SECTION: dict[str, str] = {}
for _section, _cls in _SECTION_CLASSES.items():
    for _f in dataclasses.fields(_cls):
        assert _f.name not in FIELD_SECTION, f"field name {_f.name!r} is not unique"
        FIELD_SECTION[_f.name] = _section


def choices(cls, name: str) -> tuple[str, ...]:
    """The allowed values of a Literal field, e.g. choices(ModelConfig, "attention")."""
    return typing.get_args(typing.get_type_hints(cls)[name])


# The allowed names, read from the Literal fields above (their one source), for code that lists them.
POS_ENCODINGS = choices(ModelConfig, "pos_encoding")
GRID_ENCODINGS = ("learned_2d", "sinusoidal_2d", "rope_2d")  # positions are (row, column): task grid only
ATTENTIONS = choices(ModelConfig, "attention")
NORM_PLACEMENTS = choices(ModelConfig, "norm_placement")
NORMS = choices(ModelConfig, "norm")
ACTIVATIONS = choices(ModelConfig, "activation")
TASKS = choices(DataConfig, "task")
GRID_OPS = choices(DataConfig, "grid_op")
GRAPH_OPS = choices(DataConfig, "graph_op")
GRAPH_FAMILIES = choices(DataConfig, "graph_family")
TOKENIZERS = choices(DataConfig, "tokenizer")
TIKTOKEN_ENCODINGS = tuple(name for name in TOKENIZERS if name not in ("char", "bpe"))
LR_SCHEDULES = choices(TrainConfig, "lr_schedule")
OPTIMIZERS = choices(TrainConfig, "optimizer")
DTYPES = choices(TrainConfig, "dtype")
LOGGERS = choices(TrainConfig, "logger")
DEVICES = "auto, cpu, cuda, cuda:N or mps"
SEED_MAX = 2**63 - 1
RUN_LENGTH = {"train.epochs", "train.max_iters", "train.max_time"}  # the settings that decide how long a run is


def field_docs(cls) -> dict[str, str]:
    """Each field's documentation: the comment lines just above it in this file, joined (their one source;
    config.yaml repeats them above its keys, which tests/test_config.py checks)."""
    docs, comment = {}, []
    for line in inspect.getsource(cls).splitlines()[1:]:
        text = line.strip()
        name = text.split(":")[0]
        if text.startswith("#"):
            comment.append(text[1:].strip())
        elif name.isidentifier() and line.startswith("    ") and not line.startswith("     "):
            docs[name] = " ".join(comment)
            comment = []
        else:
            comment = []
    return docs


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _describe(tp) -> str:
    if _optional_inner(tp) is not None:
        return f"{_describe(_optional_inner(tp))} or null"
    if typing.get_origin(tp) is Literal:
        return "a string"
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp]


def _optional_inner(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return None


def _coerce(key: str, value: Any, tp) -> Any:
    """Convert a YAML or command-line value to the field's type, or raise ConfigError."""
    inner = _optional_inner(tp)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none", "~", "")):
            return None
        return _coerce(key, value, inner)
    bad = ConfigError(f"{key}: {value!r} is not {_describe(tp)}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.strip().lower() in ("true", "yes", "1")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                as_float = float(value)
            except ValueError:
                raise bad from None
            if as_float.is_integer():
                return int(as_float)
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, (int, float)):
            out = float(value)
        elif isinstance(value, str):
            # PyYAML reads "3e-4" (no dot) as a string; accept it as the number it is.
            try:
                out = float(value)
            except ValueError:
                raise bad from None
        else:
            raise bad
        if not math.isfinite(out):
            raise ConfigError(f"{key}: {value!r} is not a finite number")
        return out
    if tp is str or typing.get_origin(tp) is Literal:  # a Literal's membership is checked by validate
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise bad
    raise TypeError(f"unsupported field type {tp!r}")


def _split_key(key: str) -> tuple[str, str]:
    """'train.lr' or 'lr' -> ('train', 'lr'); raise ConfigError for an unknown key."""
    if "." in key:
        section, _, name = key.partition(".")
        if section not in _SECTION_CLASSES:
            raise ConfigError(f"unknown section {section!r} in key {key!r}; sections are: {', '.join(_SECTION_CLASSES)}")
        if FIELD_SECTION.get(name) != section:
            allowed = ", ".join(f.name for f in dataclasses.fields(_SECTION_CLASSES[section]))
            raise ConfigError(f"unknown key {key!r}; section {section!r} has: {allowed}")
        return section, name
    if key not in FIELD_SECTION:
        import difflib

        close = difflib.get_close_matches(key, list(FIELD_SECTION), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown key {key!r}{hint}; valid keys are: {', '.join(sorted(FIELD_SECTION))}")
    return FIELD_SECTION[key], key


def _flatten(raw: dict, source: str) -> dict[str, Any]:
    """Turn a YAML mapping (sectioned, flat or mixed) into {'section.name': value}."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys to values, got {type(raw).__name__}")
    flat: dict[str, Any] = {}

    def put(section: str, name: str, value: Any, spelled: str) -> None:
        dotted = f"{section}.{name}"
        if dotted in flat:
            raise ConfigError(f"{source}: {spelled!r} is set twice (as {dotted!r})")
        flat[dotted] = value

    for key, value in raw.items():
        key = str(key)
        if key in _SECTION_CLASSES:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section {key!r} must be a mapping, got {value!r}")
            for sub, subvalue in value.items():
                section, name = _split_key(f"{key}.{sub}")
                put(section, name, subvalue, f"{key}.{sub}")
        else:
            section, name = _split_key(key)
            put(section, name, value, key)
    return flat


def parse_override(arg: str) -> tuple[str, Any]:
    """'--train.lr=3e-4' -> ('train.lr', 3e-4). Values are read as YAML scalars."""
    body = arg[2:] if arg.startswith("--") else arg
    if "=" not in body:
        raise ConfigError(f"override {arg!r} must look like --name=value (e.g. --lr=3e-4)")
    key, _, text = body.partition("=")
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        value = text
    return key.strip(), value


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} does not exist") from None
    except (IsADirectoryError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read as UTF-8 text: {e}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML (only plain values are allowed, no tags): {e}") from None
    return {} if raw is None else raw


def build(values: dict | None = None, overrides: list[tuple[str, Any]] | None = None, source: str = "config") -> Config:
    """Build a validated Config from a (possibly nested) mapping and (key, value) overrides."""
    flat = _flatten(values or {}, source)
    given = {}
    for key, value in overrides or []:
        section, name = _split_key(key)
        given[f"{section}.{name}"] = value
    # The run's length is set by the last layer (defaults < file < overrides) that sets epochs, max_iters
    # or max_time: the others are then null, so "--epochs=3" means 3 epochs whatever the file says.
    for layer in (given, flat):
        if RUN_LENGTH & layer.keys():
            for key in RUN_LENGTH - layer.keys():
                flat[key] = None
            break
    flat.update(given)
    cfg = Config()
    for dotted, value in flat.items():
        section, name = dotted.split(".")
        sub = getattr(cfg, section)
        setattr(sub, name, _coerce(name, value, _field_types(type(sub))[name]))
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a YAML file (or defaults when path is None) and apply '--key=value' overrides."""
    values = load_yaml(path) if path is not None else {}
    parsed = [parse_override(o) for o in overrides or []]
    return build(values, parsed, source=str(path) if path else "config")


def override_value(overrides: list[str], name: str, default: Any) -> Any:
    """The value that '--name=value' overrides give one key (bare or dotted), checked for its type
    only; ``default`` when none sets it. Lets a script read e.g. out_dir before the full config exists."""
    section = FIELD_SECTION[name]
    value = default
    for key, raw in (parse_override(o) for o in overrides):
        if _split_key(key) == (section, name):
            value = _coerce(name, raw, _field_types(_SECTION_CLASSES[section])[name])
    return value


def from_dict(d: dict) -> Config:
    """Rebuild a Config saved with Config.to_dict() (e.g. inside a checkpoint)."""
    return build(d, source="checkpoint config")


def validate(cfg: Config) -> None:
    """Raise ConfigError for any impossible value, naming the key, the value and what is allowed. A named
    choice (a Literal field) is checked against its type (_choice), each where its rules begin
    (tests/test_config.py fails for a Literal field that is not checked)."""
    _validate_data(cfg)
    _validate_model(cfg)
    _validate_train(cfg)


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {value!r} is not allowed; {allowed}")


def _choice(section: Any, name: str) -> None:
    """The Literal field section.name holds one of its names."""
    value, allowed = getattr(section, name), choices(type(section), name)
    _need(value in allowed, name, value, f"choose one of: {', '.join(allowed)}")


def _validate_data(cfg: Config) -> None:
    d, t = cfg.data, cfg.train
    _need(bool(d.data_path.strip()), "data_path", d.data_path,
          "give a UTF-8 text file, a directory of them or a glob pattern")
    _need(d.tokenizer_sample > 0, "tokenizer_sample", d.tokenizer_sample, "it must be a positive number of characters")
    _need(0.0 < d.val_fraction < 1.0, "val_fraction", d.val_fraction, "it must be between 0 and 1 (exclusive)")
    _need(d.num_workers >= 0, "num_workers", d.num_workers, "it must be >= 0")
    _choice(d, "task")
    if d.task == "spell":
        _need(d.min_len >= 1, "min_len", d.min_len, "it must be >= 1 (characters of a sentence)")
        _need(d.max_len >= d.min_len, "max_len", d.max_len, f"it must be >= min_len ({d.min_len})")
        _need(d.held_out_size > 0, "held_out_size", d.held_out_size, "it must be a positive integer")
        _need(0.0 <= d.noise_rate <= 1.0, "noise_rate", d.noise_rate, "it must be in [0, 1] (edits per letter)")
        _need(d.noise_edits >= 0, "noise_edits", d.noise_edits, "it must be >= 0 (0 = noise_rate decides)")
        _need(d.train_noise_rate is None or 0.0 <= d.train_noise_rate <= 1.0, "train_noise_rate", d.train_noise_rate,
              "it must be in [0, 1] (edits per letter), or null for noise_rate")
        _need(d.train_noise_rate is None or d.noise_edits == 0, "train_noise_rate", d.train_noise_rate,
              f"noise_edits {d.noise_edits} fixes the edits of every sentence, training ones too; set one of them")
        _need(0.0 <= d.misspelling_rate <= 1.0, "misspelling_rate", d.misspelling_rate, "it must be in [0, 1]")
    elif d.task != "lm":
        _need(d.num_symbols >= 2, "num_symbols", d.num_symbols, "it must be >= 2")
        _need(d.task != "add" or d.num_symbols <= 10, "num_symbols", d.num_symbols,
              "for task add it is the number base, 2..10")
        _need(d.task != "grid" or d.num_symbols <= 10, "num_symbols", d.num_symbols,
              "for task grid it is the number of colours, 2..10 (each written as one digit)")
        _need(d.min_len >= 1, "min_len", d.min_len, "it must be >= 1")
        _need(d.max_len >= d.min_len, "max_len", d.max_len, f"it must be >= min_len ({d.min_len})")
        _need(d.eval_long_len >= d.max_len, "eval_long_len", d.eval_long_len,
              f"it must be >= max_len ({d.max_len}); equal means no long held-out set")
        _need(d.held_out_size > 0, "held_out_size", d.held_out_size, "it must be a positive integer")
        _need(d.task != "graph" or d.mean_degree >= 0, "mean_degree", d.mean_degree,
              "it must be >= 0 (neighbours per node of an er graph)")
        _need(d.task != "graph" or d.max_hops >= 1, "max_hops", d.max_hops, "it must be >= 1")
        _need(t.epochs is None, "epochs", t.epochs,
              "generated tasks have no fixed data to pass over; set max_iters or max_time instead (epochs: null)")
        _need(t.max_iters is not None or t.max_time is not None, "max_iters", t.max_iters,
              "generated tasks need max_iters (a number of steps) or max_time (seconds of training)")
    _choice(d, "grid_op")
    _choice(d, "graph_op")
    _choice(d, "graph_family")
    _choice(d, "correction_filter")
    _need(d.copy_margin is None or d.copy_margin >= 0, "copy_margin", d.copy_margin,
          "it must be >= 0 nats (or null: always the model's output)")


def _validate_model(cfg: Config) -> None:
    """Sizes, the shape rules of each variant (checked here only; lm.nn asserts them), and the vocabulary:
    its size and the tokenizer that sets it."""
    d, m = cfg.data, cfg.model
    for key in ("block_size", "num_blocks", "num_heads", "embedding_dim"):
        _need(getattr(m, key) > 0, key, getattr(m, key), "it must be a positive integer")
    _need(m.embedding_dim % m.num_heads == 0, "embedding_dim", m.embedding_dim,
          f"it must be divisible by num_heads ({m.num_heads})")
    _need(0.0 <= m.dropout < 1.0, "dropout", m.dropout, "it must be in [0, 1)")
    _choice(m, "pos_encoding")
    _need(m.pos_encoding not in GRID_ENCODINGS or d.task == "grid", "pos_encoding", m.pos_encoding,
          f"it encodes the (row, column) of a grid, and task {d.task!r} has no grid; use it with task: grid, "
          f"or a 1D encoding ({', '.join(p for p in POS_ENCODINGS if p not in GRID_ENCODINGS)})")
    _need(m.pos_encoding != "none" or d.task in ("lm", "sort", "graph"), "pos_encoding", m.pos_encoding,
          f"without positions the encoder sees its source as an unordered bag of symbols, and task {d.task!r} "
          f"depends on their order; use another encoding (none suits lm, whose causal mask gives order, sort "
          f"and graph)")
    _need(m.pos_encoding == "none" or d.task != "graph", "pos_encoding", m.pos_encoding,
          "task graph's nodes have no order: the graph reaches the model only through the attention mask (its "
          "edges), and node numbers are arbitrary; use pos_encoding: none")
    _need(not m.tie_head or d.task != "graph", "tie_head", m.tie_head,
          "task graph's head predicts each node's answer, not a token, so there is no embedding to tie it to; "
          "set tie_head: false")
    _need(m.pos_encoding != "randomized" or d.task != "lm", "pos_encoding", m.pos_encoding,
          "randomized positions are a length-generalisation method for the seq2seq tasks (copy, reverse, ...); "
          "for task lm use learned, sinusoidal, rope or none")
    head_dim = m.embedding_dim // m.num_heads
    _need(m.pos_encoding != "rope" or head_dim % 2 == 0, "pos_encoding", m.pos_encoding,
          f"rope needs an even head width, embedding_dim / num_heads = {head_dim}")
    _need(m.pos_encoding != "rope_2d" or head_dim % 4 == 0, "pos_encoding", m.pos_encoding,
          f"rope_2d needs a head width divisible by 4, embedding_dim / num_heads = {head_dim}")
    _need(m.pos_encoding not in ("sinusoidal", "learned_2d") or m.embedding_dim % 2 == 0, "embedding_dim",
          m.embedding_dim, f"pos_encoding {m.pos_encoding} needs an even embedding_dim")
    _need(m.pos_encoding != "sinusoidal_2d" or m.embedding_dim % 4 == 0, "embedding_dim", m.embedding_dim,
          "pos_encoding sinusoidal_2d needs an embedding_dim divisible by 4")
    _need(not m.cross_rope or d.task not in ("lm", "graph"), "cross_rope", m.cross_rope,
          f"it rotates an encoder-decoder's cross-attention, and task {d.task} has none (a "
          f"{'GPT' if d.task == 'lm' else 'node-labelling encoder'})")
    _need(not m.cross_rope or (m.pos_encoding not in GRID_ENCODINGS and m.pos_encoding != "randomized"), "cross_rope", m.cross_rope,
          f"it counts consecutive positions 0, 1, 2, ... on both sides; pos_encoding {m.pos_encoding} gives "
          f"positions of its own (use a 1D encoding: learned, sinusoidal, rope)")
    _need(not m.cross_rope or head_dim % 2 == 0, "cross_rope", m.cross_rope,
          f"rotation needs an even head width, embedding_dim / num_heads = {head_dim}")
    _choice(m, "attention")
    _need(m.attention != "differential" or m.num_heads % 2 == 0, "num_heads", m.num_heads,
          "attention differential pairs heads (num_heads / 2 differential heads): it must be even")
    _choice(m, "norm_placement")
    _need(m.vocab_size >= 0, "vocab_size", m.vocab_size, "it must be >= 0 (0 = taken from the data)")
    _choice(d, "tokenizer")
    _need(d.tokenizer in ("char", "bpe") or d.task == "lm", "tokenizer", d.tokenizer,
          f"task {d.task!r} takes char or bpe" if d.task == "spell" else
          f"task {d.task!r} generates its own symbols; tokenizers are for tasks lm and spell")
    _need(d.tokenizer != "bpe" or m.vocab_size >= 256, "vocab_size", m.vocab_size,
          "tokenizer bpe learns vocab_size tokens: give vocab_size >= 256 (the 256 byte values plus the merges), "
          "e.g. --vocab_size=1024")
    _need(d.tokenizer != "bpe" or d.task != "spell" or m.vocab_size >= 259, "vocab_size", m.vocab_size,
          "task spell with tokenizer bpe: vocab_size counts PAD, BOS and EOS too, so it must be >= 259 "
          "(256 bytes + 3), e.g. --vocab_size=512")
    _need(d.tokenizer_file is None or d.tokenizer in TIKTOKEN_ENCODINGS, "tokenizer_file", d.tokenizer_file,
          f"it is for the tiktoken encodings ({', '.join(TIKTOKEN_ENCODINGS)}); tokenizer is {d.tokenizer!r}")
    _choice(m, "norm")
    _choice(m, "activation")


def _validate_train(cfg: Config) -> None:
    t = cfg.train
    _need(bool(t.out_dir.strip()), "out_dir", t.out_dir, "give a directory path")
    for key in ("batch_size", "grad_accum", "eval_interval", "eval_iters", "log_interval"):
        _need(getattr(t, key) > 0, key, getattr(t, key), "it must be a positive integer")
    _need(t.epochs is None or t.epochs > 0, "epochs", t.epochs, "it must be > 0 (or null)")
    _need(t.max_iters is None or t.max_iters > 0, "max_iters", t.max_iters, "it must be > 0 (or null)")
    _need(t.max_time is None or t.max_time > 0, "max_time", t.max_time,
          "it must be > 0 seconds of training (or null for a run by steps or epochs)")
    _need(t.lr > 0, "lr", t.lr, "it must be > 0")
    _need(0 <= t.min_lr <= t.lr, "min_lr", t.min_lr, f"it must be between 0 and lr ({t.lr})")
    _need(t.lr_decay_iters is None or t.lr_decay_iters > 0, "lr_decay_iters", t.lr_decay_iters,
          "it must be > 0 (or null for the run's last step)")
    _need(t.warmup_iters >= 0, "warmup_iters", t.warmup_iters, "it must be >= 0")
    _choice(t, "lr_schedule")
    _need(0 < t.decay_fraction <= 1, "decay_fraction", t.decay_fraction, "it must be in (0, 1]")
    _choice(t, "optimizer")
    _need(t.muon_lr > 0, "muon_lr", t.muon_lr, "it must be > 0")
    _need(t.lr_schedule != "noam" or t.warmup_iters > 0, "warmup_iters", t.warmup_iters,
          "lr_schedule noam needs warmup_iters > 0")
    _need(t.lr_schedule != "noam" or t.lr_decay_iters is None, "lr_decay_iters", t.lr_decay_iters,
          "lr_schedule noam decays as 1/sqrt(step) and has no end step; leave lr_decay_iters null "
          "(it is for the cosine schedule)")
    _need(t.lr_decay_iters is None or t.max_time is None, "lr_decay_iters", t.lr_decay_iters,
          f"with max_time ({t.max_time} s) the decay ends when the time budget is spent, not at a step; leave "
          f"lr_decay_iters null, or give the run's length in steps (max_iters, max_time: null) to end the decay "
          f"at step {t.lr_decay_iters}")
    _need(t.lr_decay_iters is None or t.lr_decay_iters > t.warmup_iters, "lr_decay_iters", t.lr_decay_iters,
          f"the cosine decay must end after the warm-up: it must be > warmup_iters ({t.warmup_iters}), "
          f"or null for the run's last step")
    _need(0 <= t.seed <= SEED_MAX, "seed", t.seed, f"it must be an integer in 0 .. {SEED_MAX} (2**63 - 1)")
    _need(0.0 <= t.label_smoothing < 1.0, "label_smoothing", t.label_smoothing, "it must be in [0, 1)")
    _need(t.weight_decay >= 0, "weight_decay", t.weight_decay, "it must be >= 0")
    _need(0 <= t.beta1 < 1, "beta1", t.beta1, "it must be in [0, 1)")
    _need(0 <= t.beta2 < 1, "beta2", t.beta2, "it must be in [0, 1)")
    _need(t.grad_clip >= 0, "grad_clip", t.grad_clip, "it must be >= 0 (0 = no clipping)")
    _choice(t, "dtype")
    _choice(t, "logger")
    _need(t.show_examples >= 0, "show_examples", t.show_examples, "it must be >= 0 (0 = show none)")
    _need(t.keep_every is None or t.keep_every > 0, "keep_every", t.keep_every,
          "it must be a positive number of steps (or null to keep none)")
    _need(t.keep_last is None or t.keep_last > 0, "keep_last", t.keep_last,
          "it must be a positive number of checkpoints (or null to keep all)")
    dev = t.device
    ok_dev = dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
    _need(ok_dev, "device", dev, f"choose one of: {DEVICES}")
