"""Docs that cannot drift: every command, file, link and checkpoint that README.md, data/README.md and
docs/*.md name is checked against the code.

Which lines are commands
    Fenced code blocks tagged ``bash``, ``sh``, ``shell`` or ``console``: every line but comment lines
    (``# ...``) is a command; in a ``console`` block that has ``$ `` prompts, only the prompted lines are.
    Untagged fenced blocks: the lines whose program is ``python``, ``torchrun``, ``bash``, ``pip``,
    ``apt-get`` or ``tensorboard``; the other lines are output. Blocks tagged otherwise (``text``, ``yaml``, ...) hold no
    commands; ``yaml`` blocks must be valid configs. A line ending in ``\\`` continues on the next, and so
    does a line that leaves a quote open; ``a && b``, ``a | b`` and ``a; b`` are two commands. Leading
    ``VAR=value``, ``time`` and ``sudo`` are skipped.

(a) Flags, against the real parsers
    ``train.py`` (also under ``torchrun``, whose own options go through torch's parser): its own
    ``parse_args``, then ``lm.config.load`` of the config file with the overrides (every ``--name=value`` a
    config key, bare or ``section.name``, with a valid value); with ``--resume`` and no ``--config`` the base
    is the checkpoint's config, so each override's key and type are checked alone. ``sample.py`` and
    ``visualize.py``: their ``parse_args``. ``bench/*.py``: the script runs up to its ``argparse`` call
    (``parse_args`` / ``parse_known_args`` are patched to stop there), and arguments left over by
    ``parse_known_args`` must be config overrides. ``python -m pytest``: known options only, ``-m`` a valid
    expression of markers registered in pytest.ini, ``-k`` a valid expression, the paths (and
    ``file::test`` ids) existing. ``pip install -r FILE`` and ``bash FILE``: the file exists; ``apt-get
    install`` comes after an ``apt-get update`` on the same page. ``tensorboard``: ``--logdir DIR`` (and
    ``--port N``, ``--bind_all``) only, DIR ``out`` or under it. Any other program is an error (add it
    here if a page needs it).

(b) Files and links
    Every file a command reads (a script, ``--config``, ``--prompt_file``, configs given to the bench
    scripts, ``data_path`` and ``tokenizer_file``) exists in the repo, except under ``out/``, ``viz/`` and
    ``/tmp/``, and the corpora fetched or written at run time (``data/<name>/input.txt`` for ``KNOWN_CORPORA``
    and the offline corpus, ``lm/data/corpus.py``); a file of the reader's own is marked ``# from: ...``
    (any text). Every relative markdown link and image exists, and its ``#anchor`` is a heading of the
    target page (GitHub's slugs). Every path in inline code (``lm/...``, ``tests/...``, ``bench/...``,
    ``configs/...``, ``docs/...``, a top-level file) exists, ``tests/x.py::test_y`` names a test defined in
    that file, and a bare ``test_name`` in inline code a test defined in tests/. The README's layout tree
    names only files that exist, and every module of ``lm/`` (and the explorer page) appears in it.

(c) Checkpoints come from somewhere
    A checkpoint or run directory that a command reads (``--checkpoint PATH``, visualize's ``--checkpoint PATH
    ...``, sample.py's default checkpoint, ``--resume`` (its ``out_dir``), ``--resume=PATH``, visualize
    ``--runs DIR ...``) must be written by an earlier command of the same page: a ``train.py`` run whose
    ``out_dir`` (``--out_dir=``, else its ``--config`` file's, else the default) is PATH, or holds PATH as
    ``last.pt`` / ``best.pt`` or as its kept checkpoints (``ckpt/``, ``ckpt/NAME.pt``).
    Otherwise the command says where it comes from, on its own line or on the comment line just above it:
        ``# from: python train.py --config configs/reverse.yaml``  a train.py command whose out_dir holds it
        ``# from: docs/seq2seq.md``                              a page where a command writes it
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io
import os
import re
import runpy
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from lm import config
from lm.data import corpus

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", ROOT / "data" / "README.md", *(ROOT / "docs").glob("*.md")])
PAGE_IDS = [str(p.relative_to(ROOT)) for p in PAGES]

COMMAND_LANGS = {"bash", "sh", "shell", "console"}
UNTAGGED_PROGRAMS = {"python", "python3", "torchrun", "bash", "pip", "apt-get", "tensorboard"}
OUTPUT_PREFIXES = ("out/", "viz/", "/tmp/")
RUNTIME_CORPORA = {f"data/{name}/input.txt" for name in (*corpus.KNOWN_CORPORA, corpus.OFFLINE_CORPUS_DIR)}
CHECKPOINT_NAMES = ("last.pt", "best.pt")

PYTEST_FLAGS = {"-q", "-qq", "-v", "-vv", "-x", "-s", "--pdb", "--lf", "--ff", "--co", "--collect-only"}
PYTEST_OPTIONS = {"-n", "-m", "-k", "-p", "--durations", "--maxfail"}


# ---------------------------------------------------------------------------------------------------------
# reading the pages

@dataclass
class Block:
    lang: str
    line: int  # line number of the first content line
    lines: list[str]


@dataclass
class Command:
    page: Path
    line: int
    text: str  # the command, comments removed, continuations joined
    note: str | None  # the "from:" of its comment, if any

    def where(self) -> str:
        return f"{shown(self.page)}:{self.line}: {self.text.strip()[:110]!r}"


def fenced_blocks(text: str) -> list[Block]:
    blocks, current, indent = [], None, 0
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.lstrip(" ")
        if current is None:
            m = re.match(r"(`{3,}|~{3,})\s*([\w+-]*)", stripped)
            if m:
                current, indent = Block(m.group(2).lower(), n + 1, []), len(line) - len(stripped)
                fence = m.group(1)
        elif stripped.startswith(fence) and not stripped.strip(fence[0]).strip():
            blocks.append(current)
            current = None
        else:
            current.lines.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def prose(text: str) -> str:
    """The page without its fenced blocks (replaced by empty lines, so line numbers stay)."""
    out, fence = [], None
    for line in text.splitlines():
        stripped = line.lstrip(" ")
        m = re.match(r"(`{3,}|~{3,})", stripped)
        if fence is None and m:
            fence = m.group(1)
            out.append("")
        elif fence is not None:
            if stripped.startswith(fence) and not stripped.strip(fence[0]).strip():
                fence = None
            out.append("")
        else:
            out.append(line)
    return "\n".join(out)


def split_comment(text: str) -> tuple[str, str | None, bool]:
    """(code, comment or None, still inside a quote at the end) of a shell line, quote-aware."""
    quote, i = None, 0
    while i < len(text):
        c = text[i]
        if quote is None:
            if c == "\\":
                i += 1
            elif c in "'\"":
                quote = c
            elif c == "#" and (i == 0 or text[i - 1].isspace()):
                return text[:i], text[i + 1:].strip(), False
        elif c == quote:
            quote = None
        elif c == "\\" and quote == '"':
            i += 1
        i += 1
    return text, None, quote is not None


def from_note(comment: str | None) -> str | None:
    if comment is None:
        return None
    m = re.search(r"\bfrom:\s*(.+)", comment)
    return m.group(1).strip() if m else None


def words(text: str) -> list[str]:
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def program_of(tokens: list[str]) -> list[str]:
    """The command without leading VAR=value, time (and /usr/bin/time -v), sudo and env."""
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if re.match(r"^[A-Za-z_]\w*=", t) or t in ("time", "sudo", "env"):
            i += 1
        elif t.endswith("/time"):
            i += 1
            while i < len(tokens) and tokens[i].startswith("-"):
                i += 1
        else:
            break
    return tokens[i:]


def commands(page: Path) -> list[Command]:
    found = []
    for block in fenced_blocks(page.read_text(encoding="utf-8")):
        if block.lang and block.lang not in COMMAND_LANGS:
            continue
        prompted = block.lang == "console" and any(l.startswith("$ ") for l in block.lines)
        pending_note, acc, start, comments = None, None, 0, []
        for n, raw in enumerate(block.lines, block.line):
            line = raw
            if acc is None:
                if prompted:
                    if not line.startswith("$ "):
                        continue
                    line = line[2:]
                if not line.strip():
                    pending_note = None
                    continue
                if line.lstrip().startswith("#"):
                    pending_note = from_note(line.lstrip()[1:]) or pending_note
                    continue
                acc, start, comments = "", n, []
            code, comment, open_quote = split_comment(acc + line)
            if open_quote:
                acc += line + "\n"
                continue
            if comment is not None:
                comments.append(comment)
            if code.rstrip().endswith("\\"):
                acc = code.rstrip()[:-1] + " "
                continue
            acc = None
            if not block.lang:
                tokens = program_of(words(code))
                if not tokens or tokens[0] not in UNTAGGED_PROGRAMS:
                    pending_note = None
                    continue
            note = next((from_note(c) for c in comments if from_note(c)), None) or pending_note
            found.append(Command(page, start, code, note))
            pending_note = None
    return found


def segments(cmd: Command) -> list[list[str]]:
    """The simple commands of one line (split at &&, ||, |, ;), each without its leading env and prefixes."""
    parts, current = [], []
    for token in words(cmd.text):
        if token and set(token) <= set(";&|"):
            parts.append(current)
            current = []
        else:
            current.append(token)
    parts.append(current)
    return [program_of(p) for p in parts if program_of(p)]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (not - or _), spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.lru_cache(maxsize=None)
def anchors(page: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(page.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        out.add(base if count == 0 else f"{base}-{count}")
    return frozenset(out)


# ---------------------------------------------------------------------------------------------------------
# the real parsers

def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.lru_cache(maxsize=None)
def program(name: str):
    """train.py, sample.py or visualize.py as a module (importing them runs nothing)."""
    return _load(f"_docs_{name}", ROOT / f"{name}.py")


class _Parsed(Exception):
    def __init__(self, namespace, extras):
        self.namespace, self.extras = namespace, extras


def bench_arguments(script: Path, argv: list[str]):
    """Run a bench script up to its argparse call; return (namespace, leftover args) or raise ValueError."""
    original = argparse.ArgumentParser.parse_known_args

    def known(self, args=None, namespace=None):
        ns, extras = original(self, args, namespace)
        raise _Parsed(ns, extras)

    def full(self, args=None, namespace=None):
        ns, extras = original(self, args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        raise _Parsed(ns, [])

    saved = sys.argv, list(sys.path), argparse.ArgumentParser.parse_args
    sys.argv = [str(script), *argv]
    argparse.ArgumentParser.parse_known_args, argparse.ArgumentParser.parse_args = known, full
    try:
        quietly(lambda: runpy.run_path(str(script), run_name="__main__"))
    except _Parsed as parsed:
        return parsed.namespace, parsed.extras
    finally:
        sys.argv, sys.path[:], argparse.ArgumentParser.parse_args = saved
        argparse.ArgumentParser.parse_known_args = original
    raise ValueError(f"{script.name} ended without parsing its arguments with argparse")


def quietly(call):
    """call(), its output swallowed; an argparse error (SystemExit) becomes a ValueError with its message."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            return call()
    except SystemExit:
        lines = err.getvalue().strip().splitlines()
        raise ValueError(lines[-1] if lines else "exited") from None


def check_override(arg: str) -> None:
    """One '--name=value': a config key (bare or section.name) and a value of its type."""
    if not arg.startswith("--") or "=" not in arg:
        raise ValueError(f"{arg!r} is not a config override --name=value")
    key, _ = config.parse_override(arg)
    name = key.rpartition(".")[2]
    if name not in config.FIELD_SECTION or ("." in key and key.partition(".")[0] != config.FIELD_SECTION[name]):
        raise ValueError(f"{key!r} is not a config key (lm.config.FIELD_SECTION)")
    try:
        config.override_value([arg], name, None)
    except config.ConfigError as e:
        raise ValueError(str(e)) from None


@dataclass
class TrainRun:
    out_dir: str
    reads: list[str] = field(default_factory=list)  # checkpoints / run directories it continues
    files: list[str] = field(default_factory=list)  # input files


def train_run(argv: list[str]) -> TrainRun:
    """What a train.py command writes and reads, through train.py's own parser and lm.config."""
    train = program("train")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            args = train.parse_args(argv)
    except SystemExit:
        return TrainRun(out_dir="")  # --help
    except config.ConfigError as e:
        raise ValueError(f"train.py: {e}") from None
    files = [args.config] if args.config else []
    if args.resume and args.config is None:
        for o in args.overrides:
            check_override(o)
        default_out = config.TrainConfig().out_dir
        if args.resume is True or any(config.parse_override(o)[0].endswith("out_dir") for o in args.overrides):
            out_dir = config.override_value(args.overrides, "out_dir", default_out)
        else:  # the checkpoint's own out_dir, which is where it lies for the checkpoints these pages make
            out_dir = args.resume.rpartition("/")[0] if args.resume.endswith(".pt") else args.resume
        data = config.override_value(args.overrides, "data_path", None)
        tok = config.override_value(args.overrides, "tokenizer_file", None)
        files += [f for f in (data, tok) if f]
    else:
        try:
            cfg = config.load(args.config, args.overrides)
        except config.ConfigError as e:
            raise ValueError(f"train.py: {e}") from None
        out_dir = cfg.train.out_dir
        if cfg.data.task == "lm":
            files.append(cfg.data.data_path)
        if cfg.data.tokenizer_file:
            files.append(cfg.data.tokenizer_file)
    reads = [] if not args.resume else [out_dir if args.resume is True else args.resume]
    return TrainRun(norm(out_dir), [norm(r) for r in reads], files)


def shown(page: Path) -> str:
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def norm(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def in_repo(path: str) -> bool:
    return (ROOT / path).exists()


def exempt(path: str) -> bool:
    """Written by a run or fetched at run time, so never in the repo."""
    p = norm(path)
    return p.startswith(OUTPUT_PREFIXES) or p + "/" in OUTPUT_PREFIXES or p in RUNTIME_CORPORA


# ---------------------------------------------------------------------------------------------------------
# checking the commands of one page

class PageCheck:
    def __init__(self, page: Path, written_elsewhere: dict[Path, set[str]] | None = None):
        self.page = page
        self.written: set[str] = set()  # out_dirs written so far on this page
        self.apt_updated = False
        self.problems: list[str] = []
        self.elsewhere = written_elsewhere or {}

    def run(self) -> list[str]:
        for cmd in commands(self.page):
            for seg in segments(cmd):
                try:
                    self.check(seg, cmd)
                except ValueError as e:
                    self.problems.append(f"{cmd.where()}: {e}")
        return self.problems

    # --- what a command reads

    def need_file(self, path: str, cmd: Command, what: str) -> None:
        if any(c in path for c in "*?["):  # a glob: its directory must be there
            path = path.split("*")[0].split("?")[0].split("[")[0].rstrip("/") or "."
        if in_repo(path) or exempt(path) or cmd.note:
            return
        raise ValueError(f"{what} {path!r} is not in the repo (mark a file of the reader's own with '# from: ...')")

    def need_run(self, path: str, cmd: Command) -> None:
        """A checkpoint file or run directory must come from an earlier train.py command, or its note."""
        p = norm(path)
        if self.provides(self.written, p):
            return
        if cmd.note is None:
            raise ValueError(f"reads {p!r}, which no earlier command on this page writes (add the train.py "
                             f"command before it, or '# from: <train.py command | docs page>')")
        note = cmd.note
        if note.startswith(("python train.py", "torchrun")):
            seg = segments(Command(cmd.page, cmd.line, note, None))[0]
            out_dir = train_run(seg[seg.index("train.py") + 1:] if "train.py" in seg else ["--bad"]).out_dir
            if not self.provides({out_dir}, p):
                raise ValueError(f"'# from: {note}' writes {out_dir!r}, not {p!r}")
        elif note.split("#")[0].endswith(".md"):
            target = (ROOT / note.split("#")[0]).resolve()
            if not target.exists():
                raise ValueError(f"'# from: {note}': no such page")
            if not self.provides(self.elsewhere.get(target, set()), p):
                raise ValueError(f"'# from: {note}': no command on that page writes {p!r}")
        else:
            raise ValueError(f"'# from: {note}' must be a train.py command or a docs page")

    @staticmethod
    def provides(out_dirs: set[str], p: str) -> bool:
        """p is a run directory written, its last.pt / best.pt, or its kept checkpoints (ckpt/, ckpt/NAME.pt)."""
        head, _, name = p.rpartition("/")
        kept = head if name.endswith(".pt") else p  # the folder of ckpt/NAME.pt, or the folder itself
        return (p in out_dirs or (name in CHECKPOINT_NAMES and head in out_dirs)
                or (kept.endswith("/ckpt") and kept[: -len("/ckpt")] in out_dirs))

    # --- the programs

    def check(self, seg: list[str], cmd: Command) -> None:
        prog, args = seg[0], seg[1:]
        if prog in ("python", "python3"):
            if args[:1] == ["-c"]:
                return
            if args[:2] == ["-m", "pytest"]:
                return self.pytest(args[2:])
            if not args or args[0].startswith("-"):
                raise ValueError(f"python {' '.join(args[:2])}: not a script this test knows")
            script = args[0]
            if not in_repo(script):
                raise ValueError(f"script {script!r} does not exist")
            return self.script(norm(script), args[1:], cmd)
        if prog == "torchrun":
            from torch.distributed.run import get_args_parser

            try:
                ns = quietly(lambda: get_args_parser().parse_args(args))
            except ValueError as e:
                raise ValueError(f"torchrun: {e}") from None
            if norm(ns.training_script) != "train.py":
                raise ValueError(f"torchrun runs {ns.training_script!r}; this test knows train.py only")
            return self.script("train.py", ns.training_script_args, cmd)
        if prog == "pip":
            if args[:2] == ["install", "-r"] and len(args) == 3:
                if not in_repo(args[2]):
                    raise ValueError(f"{args[2]!r} does not exist")
                return
            raise ValueError("pip: only 'pip install -r FILE' is known here")
        if prog == "apt-get":
            if args[:1] == ["update"]:
                self.apt_updated = True
            elif args[:1] == ["install"] and not self.apt_updated:
                raise ValueError("apt-get install without an apt-get update before it on this page")
            return
        if prog == "tensorboard":
            parser = argparse.ArgumentParser(prog="tensorboard")
            parser.add_argument("--logdir", required=True)
            parser.add_argument("--port", type=int)
            parser.add_argument("--bind_all", action="store_true")
            ns = quietly(lambda: parser.parse_args(args))
            if norm(ns.logdir) != "out" and not norm(ns.logdir).startswith("out/"):
                raise ValueError(f"tensorboard --logdir {ns.logdir!r}: the runs are under out/")
            return
        if prog == "bash":
            if not args or not in_repo(args[0]):
                raise ValueError(f"bash: {args[:1]} is not a file of the repo")
            return
        raise ValueError(f"program {prog!r} is unknown to tests/test_docs.py")

    def script(self, script: str, args: list[str], cmd: Command) -> None:
        if script == "train.py":
            run = train_run(args)
            for f in run.files:
                self.need_file(f, cmd, "file")
            for r in run.reads:
                self.need_run(r, cmd)
            if run.out_dir:
                self.written.add(run.out_dir)
        elif script in ("sample.py", "visualize.py"):
            ns = quietly(lambda: program(script[:-3]).parse_args(args))
            given = getattr(ns, "checkpoint", None) or []
            for path in [given] if isinstance(given, str) else given:  # visualize.py: one or several
                self.need_run(path, cmd)
            for run_dir in getattr(ns, "runs", None) or []:
                self.need_run(run_dir, cmd)
            if getattr(ns, "prompt_file", None):
                self.need_file(ns.prompt_file, cmd, "--prompt_file")
        elif script.startswith("bench/"):
            ns, extras = bench_arguments(ROOT / script, args)
            for extra in extras:
                if extra != "--":
                    check_override(extra)
            for path in getattr(ns, "configs", None) or []:
                self.need_file(path, cmd, "config")
                try:
                    config.load(ROOT / path)
                except config.ConfigError as e:
                    raise ValueError(str(e)) from None
            if getattr(ns, "checkpoint", None):
                self.need_run(ns.checkpoint, cmd)
            if getattr(ns, "data_path", None):
                self.need_file(ns.data_path, cmd, "--data_path")

    def pytest(self, args: list[str]) -> None:
        from _pytest.mark.expression import Expression  # pytest's own -m / -k parser (raises SyntaxError)

        registered = set(markers())
        i = 0
        while i < len(args):
            a = args[i]
            name, eq, inline = a.partition("=")
            if a in PYTEST_FLAGS:
                pass
            elif name in PYTEST_OPTIONS:
                if eq:
                    value = inline
                else:
                    i += 1
                    if i >= len(args):
                        raise ValueError(f"pytest {a} needs a value")
                    value = args[i]
                try:
                    if name == "-m":
                        Expression.compile(value)
                        used = set(re.findall(r"[\w:+\-.\[\]\\/]+", value)) - {"and", "or", "not"}
                        if used - registered:
                            raise ValueError(f"pytest -m {value!r}: markers {sorted(used - registered)} are not "
                                             f"registered in pytest.ini")
                    elif name == "-k":
                        Expression.compile(value)
                    elif name == "-n" and not (value.isdigit() or value in ("auto", "logical")):
                        raise ValueError(f"pytest -n {value!r}: a number of workers, auto or logical")
                except SyntaxError as e:
                    raise ValueError(f"pytest {name} {value!r}: {e}") from None
            elif a.startswith("-"):
                raise ValueError(f"pytest option {a!r} is not one this test knows (PYTEST_FLAGS, PYTEST_OPTIONS)")
            else:
                path, _, test = a.partition("::")
                if not in_repo(path):
                    raise ValueError(f"pytest path {path!r} does not exist")
                if test and not defines_test(ROOT / path, test.split("::")[-1].split("[")[0]):
                    raise ValueError(f"{path} defines no {test!r}")
            i += 1


@functools.lru_cache(maxsize=None)
def markers() -> tuple[str, ...]:
    import configparser

    ini = configparser.ConfigParser(interpolation=None)
    ini.read(ROOT / "pytest.ini")
    lines = ini.get("pytest", "markers", fallback="").splitlines()
    return tuple(l.split(":")[0].split("(")[0].strip() for l in lines if l.strip())


@functools.lru_cache(maxsize=None)
def suite_sources() -> dict[Path, str]:
    return {p: p.read_text(encoding="utf-8") for p in (ROOT / "tests").glob("test_*.py")}


def defines_test(path: Path, name: str) -> bool:
    source = suite_sources().get(path.resolve()) or path.read_text(encoding="utf-8")
    return re.search(rf"^\s*(?:async\s+)?def {re.escape(name)}\(", source, re.M) is not None


@functools.lru_cache(maxsize=None)
def written_by_page() -> dict[Path, frozenset[str]]:
    """The out_dirs each page's train.py commands write (for '# from: docs/page.md')."""
    out = {}
    for page in PAGES:
        dirs = set()
        for cmd in commands(page):
            for seg in segments(cmd):
                if seg[0] in ("python", "python3") and seg[1:2] == ["train.py"]:
                    with contextlib.suppress(ValueError):
                        dirs.add(train_run(seg[2:]).out_dir)
                elif seg[0] == "torchrun" and "train.py" in seg:
                    with contextlib.suppress(ValueError):
                        dirs.add(train_run(seg[seg.index("train.py") + 1:]).out_dir)
        out[page.resolve()] = frozenset(dirs)
    return out


# ---------------------------------------------------------------------------------------------------------
# the tests

@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_command_parses_and_reads_what_exists_or_was_written_before(page):
    problems = PageCheck(page.resolve(), written_by_page()).run()
    assert not problems, "\n".join(problems)


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_link_and_image_exists(page):
    problems = []
    text = re.sub(r"`[^`\n]*`", "", prose(page.read_text(encoding="utf-8")))
    for n, line in enumerate(text.splitlines(), 1):
        for target in LINK.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page.resolve()
            if not dest.exists():
                problems.append(f"{shown(page)}:{n}: link to {target!r}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                problems.append(f"{shown(page)}:{n}: link to {target!r}: {dest.name} has no heading "
                                f"with that anchor")
    assert not problems, "\n".join(problems)


CODE_PATH = re.compile(r"^(?:\.ci|lm|tests|bench|configs|docs|data)/[\w./-]*$")


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_path_and_test_named_in_inline_code_exists(page):
    problems = []
    text = prose(page.read_text(encoding="utf-8"))
    for n, line in enumerate(text.splitlines(), 1):
        for span in re.findall(r"`([^`\n]+)`", line):
            span = span.strip()
            path, _, test = span.partition("::")
            if test and re.match(r"^[\w/]+\.py$", path):
                file = ROOT / path if "/" in path else ROOT / "tests" / path
                if not file.exists() or not defines_test(file, test.split("[")[0]):
                    problems.append(f"{shown(page)}:{n}: {span!r}: no such test")
            elif re.fullmatch(r"test_\w+", span):
                if not any(defines_test(p, span) for p in suite_sources()):
                    problems.append(f"{shown(page)}:{n}: {span!r}: no test of that name in tests/")
            elif CODE_PATH.match(span):
                if not (in_repo(span) or exempt(span) or norm(span).startswith("data/")):
                    problems.append(f"{shown(page)}:{n}: {span!r}: no such file or directory")
    assert not problems, "\n".join(problems)


def layout_entries() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("\n## Layout", 1)[1].split("\n## ", 1)[0]
    block = next(b for b in fenced_blocks(section) if b.lang == "text")
    paths, stack = [], []  # stack: (indent, directory)
    for line in block.lines:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        left = re.split(r"\s{2,}", line.strip(), maxsplit=1)[0]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        prefix = "".join(d for _, d in stack)
        for name in (n.strip() for n in left.split(",")):
            paths.append(prefix + name)
            if name.endswith("/"):
                stack.append((indent, name))
    return paths


def test_the_layout_tree_names_real_files_and_every_module_of_lm():
    listed = layout_entries()
    missing = [p for p in listed if not in_repo(p.rstrip("/")) and not p.startswith("data/")]
    assert not missing, f"the README's layout tree names files that do not exist: {missing}"
    modules = sorted(str(p.relative_to(ROOT)).replace(os.sep, "/") for p in (ROOT / "lm").rglob("*")
                     if p.suffix in (".py", ".html") and p.name != "__init__.py" and "__pycache__" not in p.parts)
    unlisted = [m for m in modules if m not in listed]
    assert not unlisted, f"add these to the README's layout tree: {unlisted}"


def test_every_yaml_block_is_a_valid_config():
    problems = []
    for page in PAGES:
        for block in fenced_blocks(page.read_text(encoding="utf-8")):
            if block.lang in ("yaml", "yml"):
                try:
                    config.build(yaml.safe_load("\n".join(block.lines)), source=f"{page.name}:{block.line}")
                except config.ConfigError as e:
                    problems.append(f"{shown(page)}:{block.line}: {e}")
    assert not problems, "\n".join(problems)


def test_the_checks_catch_a_bad_flag_and_a_checkpoint_from_nowhere(tmp_path):
    """The checks above would fail on the mistakes they exist for (a guard against a check that passes
    everything)."""
    page = tmp_path / "page.md"
    page.write_text("```bash\n"
                    "python train.py --config config.yaml --max_iter=5\n"
                    "python sample.py --checkpoint out/nowhere/best.pt --beams 4\n"
                    "python sample.py --checkpoint out/elsewhere/best.pt\n"
                    "python train.py --resume --out_dir=out/never\n"
                    "python bench/sample_speed.py --tokenz 5\n"
                    "python -m pytest -q -m \"not slwo\" tests\n"
                    "apt-get install chromium\n"
                    "```\n", encoding="utf-8")
    problems = PageCheck(page).run()
    expected = ["max_iter", "--beams", "out/elsewhere", "out/never", "--tokenz", "slwo", "apt-get update"]
    for word in expected:
        assert any(word in p for p in problems), (word, problems)
    good = tmp_path / "good.md"
    good.write_text("```bash\n"
                    "python train.py --config configs/copy.yaml --max_iters=5\n"
                    "python sample.py --checkpoint out/copy/best.pt --input \"1 2\" --beam 2\n"
                    "python sample.py --checkpoint out/reverse/last.pt"
                    "  # from: python train.py --config configs/reverse.yaml\n"
                    "```\n", encoding="utf-8")
    assert PageCheck(good).run() == []
