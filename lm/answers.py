"""A model's answer as text, the way sample.py prints it; shared with the examples a run shows (lm.jobs).

    decode_tokens   a language model's token ids -> text (UTF-8 across BPE tokens), piece by piece
    answer          a seq2seq model's output for one source written as text ("5 7 9 2", "123+45",
                    "012/340/567", a sentence to correct): parsed, decoded (greedy or beam search) and
                    written back as the task writes it; task spell corrects it piece by piece and
                    applies correction_filter (docs/seq2seq.md)
    graph_answer    task graph: every node's answer for a graph written as an edge list

Nothing here prints: what a user should be told comes out through the note callback (sample.py writes
it on stderr), and every source is shown to on_source before it is decoded.
"""

from __future__ import annotations

import codecs
from typing import Callable, Iterable, Iterator

import torch

from .data.sentences import normalise_space, split_sentences
from .data.tasks import BOS, EOS, PAD
from .generate import Source, beam_search, greedy_decode, keeps_input, prepare_source


def _ignore(_) -> None:
    return None


def decode_tokens(tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """The text of token ids, a piece per token as they come (a lazy iterable stays lazy): each token's
    bytes (token_bytes) decoded as UTF-8, a character split across tokens written once it is whole, bytes
    that are not UTF-8 as U+FFFD; a last piece flushes what is left. "".join gives the whole text."""
    text = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token in ids:
        yield text.decode(tokenizer.token_bytes(token))
    yield text.decode(b"", final=True)


def decode_source(model, source: Source, beam: int = 1, alpha: float = 0.6, use_cache: bool = True) -> list[int]:
    """The output token ids for one prepared source (lm.generate.prepare_source): greedy with beam 1, else
    beam search (alpha: its length penalty); EOS last when the model wrote it within source.max_len tokens."""
    decode = dict(use_cache=use_cache, src_pos=source.src_pos, tgt_pos=source.tgt_pos)
    if beam == 1:
        out = greedy_decode(model, source.src, source.mask, source.max_len, BOS, EOS, PAD, **decode)
    else:
        out = beam_search(model, source.src, source.mask, source.max_len, BOS, EOS, PAD, beam=beam, alpha=alpha,
                          **decode)
    return out[0].tolist()


def answer(model, task, cfg, text: str, device, beam: int = 1, alpha: float = 0.6, use_cache: bool = True,
           note: Callable[[str], None] = _ignore, on_source: Callable[[Source], None] = _ignore) -> str:
    """The model's output for a source written as text, as sample.py --input prints it (without the line
    break). The decoders put the model in eval mode and leave it there; no autocast: it computes in its
    weights' dtype (float32, as sample.py loads a checkpoint).
    Task spell: spell_pieces, each piece decoded (kept as it is when copy_margin says so) and then
    filtered, joined by spaces.
    ValueError for a source the model cannot take (its message says why)."""
    if task.name != "spell":
        return _answer_one(model, task, cfg, text, device, beam, alpha, use_cache, note, on_source)
    return " ".join(filtered(task, cfg, piece,
                             _answer_one(model, task, cfg, piece, device, beam, alpha, use_cache, note, on_source))
                    for piece in spell_pieces(task, cfg, text, note))


def _answer_one(model, task, cfg, text, device, beam, alpha, use_cache, note, on_source) -> str:
    """One source: parsed (prepare_source), shown to on_source, decoded, written as the task writes it.
    Task spell with copy_margin: the source itself when the model does not find its output more likely
    by the margin (lm.generate.keeps_input), as evaluation decides."""
    source = prepare_source(task, cfg, text, device)
    on_source(source)
    tokens = decode_source(model, source, beam, alpha, use_cache)
    if EOS not in tokens:
        note(f"note: no end-of-sequence token within {source.max_len} output tokens")
    margin = cfg.data.copy_margin if task.name == "spell" else None
    output = tokens[: tokens.index(EOS)] if EOS in tokens else tokens
    if keeps_input(model, source.src, source.mask, [source.ids], [output], margin, cfg.model.block_size,
                   source.src_pos, source.tgt_pos)[0]:
        tokens = source.ids
    return task.render(task.from_ids(tokens))


@torch.no_grad()
def graph_answer(model, task, text: str, device, on_graph: Callable = _ignore) -> str:
    """Task graph: every node's answer for a graph written as text ("0-1 1-2 2-3 3-0 2-4; source 0"), as
    sample.py --input prints it ("0:0 1:1 2:2 3:1 4:3", GraphTask.render_answers); the parsed Graph is shown
    to on_graph first. The model is put in eval mode and left there; it computes in its weights' dtype.
    ValueError for a graph it cannot take."""
    graph = task.parse(text)
    on_graph(graph)
    batch = task.encode(graph).to(device)
    model.eval()
    logits, _ = model(batch.tokens, batch.mask())  # (1, N, classes)
    return task.render_answers(logits[0].argmax(-1).tolist())


def filtered(task, cfg, source: str, output: str) -> str:
    """Task spell's output after correction_filter: known_words puts back each word the model changed into a
    non-word (SpellTask.keep_known_changes, docs/seq2seq.md); none leaves the output as it is."""
    return task.keep_known_changes(source, output) if cfg.data.correction_filter == "known_words" else output


def spell_pieces(task, cfg, text: str, note: Callable[[str], None] = _ignore) -> list[str]:
    """Task spell, best effort: characters the model never saw are left out (a note names them), and a text
    longer than the model's block_size is corrected sentence by sentence (lm.data.sentences, a note says
    so). ValueError when no character is left, or the text is empty."""
    unknown = task.unknown_characters(text)
    if unknown:
        kept = "".join(c for c in text if c not in unknown)
        note(f"note: the model never saw {', '.join(repr(c) for c in unknown)} in training; correcting the input "
             f"without {'it' if len(unknown) == 1 else 'them'}")
        if not normalise_space(kept):
            raise ValueError(f"the input {text!r} has no character this model knows")
        text = kept
    sentence = normalise_space(text)
    if len(task.parse(sentence)) <= cfg.model.block_size:  # parse: the empty input's message
        return [sentence]
    pieces = split_sentences(sentence, max_chars=cfg.data.max_len)
    note(f"note: the input is longer than this model's {cfg.model.block_size} positions (block_size); "
         f"correcting it as {len(pieces)} pieces (sentences, cut at ; : , where long)")
    return pieces


def example_line(example: dict) -> str:
    """One example a run shows at an evaluation (lm.jobs: Job.examples), on one line, line breaks as ↵:
    "✓ 5 7 9 2 -> 2 9 7 5", "✗ 1 2 3 -> 3 2 2 (target 3 2 1)", or a language model's "ROMEO:↵ -> I'll tell...".
    The console (train.py) and TensorBoard's text tab (lm.logger) both write these lines."""
    def one_line(text: str) -> str:
        return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "↵")

    if "prompt" in example:
        return f"{one_line(example['prompt'])} -> {one_line(example['continuation'])}"
    if example["right"]:
        return f"✓ {example['input']} -> {example['prediction']}"
    return f"✗ {example['input']} -> {example['prediction']} (target {example['target']})"
