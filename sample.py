"""Generate from a checkpoint.

Language model: stream text to stdout as it is produced (several samples: generated as one batch,
each printed when the batch is done; sample i is seeded seed + i, as --num_samples 1 --seed seed+i is;
see docs/cli.md: --num_samples).
    python sample.py --checkpoint out/shakespeare_char/best.pt --prompt "ROMEO:" \
        --max_new_tokens 500 --temperature 0.8 --top_k 40 --top_p 0.95 --num_samples 3 --seed 1
Seq2seq task: print the model's output for one source sequence (greedy, or beam search).
    python sample.py --checkpoint out/reverse/best.pt --input "5 7 9 2" [--beam 4]
    python sample.py --checkpoint out/grid/best.pt --input "012/340/567"   (grid: rows separated by /)
    python sample.py --checkpoint out/spell/best.pt --input "Thou art a vilain and a begger"   (spell)
Graph task: print every node's answer, "node:answer" in node order (docs/graphs.md).
    python sample.py --checkpoint out/graph/best.pt --input "0-1 1-2 2-3 3-0 2-4; source 0"

Needs nothing but the checkpoint: the model's config and vocabulary are inside it.

Exit codes: 0 done; 2 a bad setting, input or checkpoint (the message says which); 130 stopped
by Ctrl-C (SIGINT); 141 (128 + SIGPIPE, what a shell reports for a program killed by SIGPIPE)
when the reader of stdout went away, e.g. `python sample.py ... | head -c 100`. Both stops are
quiet: no traceback, and no "Exception ignored" from the final flush of the closed pipe.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from lm.answers import answer, decode_tokens, graph_answer
from lm.checkpoint import CheckpointError, load_model
from lm.config import ConfigError
from lm.generate import check_sampling, generate
from lm.data.tokenizer import UnknownCharactersError
from lm.device import resolve_device

SEPARATOR = "\n" + "-" * 40 + "\n"
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def parse_args(argv):
    p = argparse.ArgumentParser(description="Generate text from a trained checkpoint.")
    p.add_argument("--checkpoint", default="out/shakespeare_char/best.pt", help="checkpoint file (default: %(default)s)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    src.add_argument("--prompt_file", default=None, help="read the prompt from this UTF-8 file")
    p.add_argument("--max_new_tokens", type=int, default=500, help="tokens to generate per sample")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy; higher = more random")
    p.add_argument("--top_k", type=int, default=None, help="sample only among the k most likely tokens")
    p.add_argument("--top_p", type=float, default=None, help="sample only within the nucleus of mass p, in (0, 1]")
    p.add_argument("--num_samples", type=int, default=1,
                   help="independent samples, generated as one batch (sample i is seeded seed + i)")
    p.add_argument("--seed", type=int, default=1337, help="random seed of the first sample (sample i: seed + i)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--no_cache", action="store_true", help="recompute the whole context for every token")
    p.add_argument("--input", default=None,
                   help='seq2seq checkpoints: the source, e.g. "5 7 9 2", "123+45", a grid "012/340/567" or '
                        'a sentence to correct (task spell); task graph: an edge list, e.g. '
                        '"0-1 1-2 2-3 3-0 2-4; source 0"')
    p.add_argument("--beam", type=int, default=1, help="seq2seq: beam width (1 = greedy decoding)")
    p.add_argument("--length_penalty", type=float, default=0.6, help="seq2seq beam search: GNMT alpha (0 = none)")
    return p.parse_args(argv)


def read_prompt(args) -> str:
    if args.prompt_file is not None:
        try:
            return Path(args.prompt_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read --prompt_file {args.prompt_file!r}: {e}") from None
    return "\n" if args.prompt is None else args.prompt


def encode_prompt(args, tokenizer, cfg) -> tuple[str, list[int]]:
    """The prompt and its token ids; a note on stderr when it is longer than the model's block_size."""
    prompt = read_prompt(args)
    if not prompt:
        raise ValueError("the prompt is empty; give at least one character (the default prompt is a newline)")
    try:
        ids = tokenizer.encode(prompt)
    except UnknownCharactersError as e:
        raise ValueError(f"the prompt cannot be encoded: {e}") from None
    if len(ids) > cfg.model.block_size:
        print(f"note: the prompt has {len(ids)} tokens; the model sees only the last "
              f"{cfg.model.block_size} (block_size)", file=sys.stderr)
    return prompt, ids


def sample_text(args, model, tokenizer, cfg, device) -> int:
    """Language model: continue the prompt. The --num_samples samples are generated as one batch; one sample
    streams token by token, several are printed in order when the batch is done, SEPARATOR between them."""
    if args.input is not None:
        raise ValueError(f"--input is for seq2seq task checkpoints; {args.checkpoint} is a language model: use --prompt")
    if args.num_samples < 1:
        raise ValueError(f"--num_samples {args.num_samples} is not allowed; it must be >= 1")
    check_sampling(args.temperature, args.top_k, args.top_p, args.max_new_tokens)
    prompt, ids = encode_prompt(args, tokenizer, cfg)
    n = args.num_samples
    idx = torch.tensor(ids, dtype=torch.long, device=device)[None].repeat(n, 1)  # (N, T): the samples are one batch
    # sample i draws from its own generator, seeded seed + i: the tokens --num_samples 1 --seed seed+i gives
    generators = [torch.Generator(device=device).manual_seed(args.seed + i) for i in range(n)]
    tokens = generate(model, idx, args.max_new_tokens, args.temperature, args.top_k, args.top_p, generators,
                      use_cache=not args.no_cache)  # yields (N, 1) per step
    if n == 1:
        write_sample(prompt, (token[0, 0].item() for token in tokens), tokenizer, stream=True)
    else:
        write_samples(prompt, tokens, n, tokenizer)
    sys.stdout.flush()
    return 0


def write_samples(prompt: str, tokens, n: int, tokenizer) -> None:
    """Several samples: all are complete after the batch's last step; then each in order, SEPARATOR between."""
    steps = list(tokens)  # max_new_tokens x (N, 1)
    rows = torch.cat(steps, dim=1).tolist() if steps else [[] for _ in range(n)]  # N lists of max_new_tokens ids
    for i, row in enumerate(rows):
        if i:
            sys.stdout.write(SEPARATOR)
        write_sample(prompt, row, tokenizer, stream=False)


def write_sample(prompt: str, token_ids, tokenizer, stream: bool) -> None:
    """The prompt, the tokens' text (lm.answers.decode_tokens: a BPE token may end mid-character), then a
    line break; stream: flush after each token, as it is generated."""
    sys.stdout.write(prompt)
    for piece in decode_tokens(tokenizer, token_ids):
        sys.stdout.write(piece)
        if stream:
            sys.stdout.flush()
    sys.stdout.write("\n")


def input_length(task, symbols: list[int]) -> int:
    """The length of a parsed source as training counts it (lm.data.tasks): its number of symbols, for add
    the number of digits of the longer operand (leading zeros not counted), for grid its longer side, for
    spell its characters."""
    if task.name == "spell":
        return len(task.render(symbols))
    if task.name == "grid":
        return task.side(symbols)
    if task.name != "add":
        return len(symbols)
    plus = symbols.index(task.plus)

    def digits(number: list[int]) -> int:  # least significant digit first, zero-padded to the width
        return max((i + 1 for i, d in enumerate(number) if d), default=1)

    return max(digits(symbols[:plus]), digits(symbols[plus + 1:]))


def warn_if_untrained_length(task, symbols: list[int], cfg) -> None:
    """Say on stderr when the source's length is outside the lengths the model was trained on:
    the output is still produced, but is then likely wrong."""
    n, lo, hi = input_length(task, symbols), cfg.data.min_len, cfg.data.max_len
    if lo <= n <= hi:
        return
    what = {"add": "digits in the longer number", "grid": "cells on the longer side",
            "spell": "characters"}.get(task.name, "symbols")
    side = "longer" if n > hi else "shorter"
    if n > hi and cfg.model.pos_encoding == "randomized":
        print(f"note: the input has length {n} ({what}), longer than the lengths {lo}..{hi} this model was trained "
              f"on; its randomized positions are made for that (see docs/seq2seq.md)", file=sys.stderr)
        return
    print(f"warning: the input has length {n} ({what}), {side} than the lengths {lo}..{hi} this model was "
          f"trained on; its output is likely wrong", file=sys.stderr)


def transduce(args, model, task, cfg, device) -> int:
    """Seq2seq task: decode the output for one source sequence and print it (lm.answers.answer)."""
    if args.input is None:
        example = {"add": "123+45", "grid": "012/340/567", "spell": "Thou art a vilain"}.get(cfg.data.task, "5 7 9 2")
        raise ValueError(f"{args.checkpoint} was trained on task {cfg.data.task!r}: give the source with --input, "
                         f"e.g. --input \"{example}\"")
    if args.prompt is not None or args.prompt_file is not None:
        raise ValueError("--prompt is for language-model checkpoints; for a seq2seq task use --input")
    if args.beam < 1:
        raise ValueError(f"--beam {args.beam} is not allowed; it must be >= 1 (1 = greedy)")
    print(answer(model, task, cfg, args.input, device, args.beam, args.length_penalty, use_cache=not args.no_cache,
                 note=lambda message: print(message, file=sys.stderr),
                 on_source=lambda source: warn_if_untrained_length(task, source.symbols, cfg)))
    return 0


GRAPH_EXAMPLES = {"distance": "0-1 1-2 2-3 3-0 2-4; source 0", "component": "0-1 1-2 3-4; labels 1 0 1 1 0",
                  "degree": "0-1 1-2 2-3 3-0 2-4"}


def label_nodes(args, model, task, cfg, device) -> int:
    """Task graph: print every node's answer for the graph given as an edge list (lm.data.graphs), e.g.
    "0:0 1:1 2:2 3:1 4:3"; a warning on stderr for a graph larger or smaller than those trained on."""
    if args.input is None:
        raise ValueError(f"{args.checkpoint} was trained on task 'graph' (graph_op {task.op}): give the graph with "
                         f"--input, e.g. --input \"{GRAPH_EXAMPLES[task.op]}\" (edges a-b, then '; source S', "
                         f"'; labels ...', '; nodes N' as the op needs; docs/graphs.md)")
    if args.prompt is not None or args.prompt_file is not None:
        raise ValueError("--prompt is for language-model checkpoints; for a graph use --input")
    if args.beam != 1:
        raise ValueError(f"--beam {args.beam}: a graph's answers come from one forward pass, there is nothing to "
                         f"search; leave --beam out")
    print(graph_answer(model, task, args.input, device, on_graph=lambda graph: warn_if_untrained_size(graph, cfg)))
    return 0


def warn_if_untrained_size(graph, cfg) -> None:
    """Say on stderr when a graph has more or fewer nodes than the graphs the model was trained on."""
    n, lo, hi = graph.num_nodes, cfg.data.min_len, cfg.data.max_len
    if not lo <= n <= hi:
        print(f"warning: the graph has {n} nodes, {'more' if n > hi else 'fewer'} than the {lo}..{hi} this model was "
              f"trained on; its answers are less reliable (long_exact in the run's metrics.jsonl scores larger "
              f"graphs)", file=sys.stderr)


def run(args) -> int:
    try:
        device = resolve_device(args.device)
        model, vocab, cfg = load_model(args.checkpoint, device)
        job = {"lm": sample_text, "graph": label_nodes}.get(cfg.data.task, transduce)
        return job(args, model, vocab, cfg, device)
    except (ValueError, CheckpointError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv) -> int:
    args = parse_args(argv)
    try:
        code = run(args)
        sys.stdout.flush()  # a closed pipe shows here rather than in the interpreter's final flush
        return code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # the reader is gone: point stdout at devnull so the final flush of what is still buffered
        # does not fail again ("Exception ignored ... BrokenPipeError") at exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
