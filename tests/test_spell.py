"""Task spell: the sentence files, the vocabulary, the job's batches and held-out set, its config checks, and
train.py + sample.py + visualize.py end to end on a corpus of our own small enough to memorise."""

import json
from collections import Counter

import pytest
import torch

from conftest import ROOT
from helpers import cli

from lm import config
from lm.config import ConfigError
from lm.data.noise import NoiseModel
from lm.data.spell import SpellTask, prepare_sentences
from lm.data.tokenizer import CharTokenizer
from lm.jobs import SpellJob, make_job, vocab_from_state
from lm.spelling import spelling_scores

# our own sentences: each 20-60 characters, every one a line of its own (the verse rule ends it)
SENTENCES = [
    "The little boat sailed across the bay.",
    "Seven geese walked slowly past the mill.",
    "My brother painted the garden wall green.",
    "Every morning the baker opens his shop.",
    "A cold wind blew over the empty hills.",
    "She found an old letter under the stairs.",
    "Thou art a villain and a beggar.",
    "The children sang while the rain fell.",
]


def corpus(tmp_path, repeats=40):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(SENTENCES * repeats) + "\n", encoding="utf-8")
    return path


def spell_config(tmp_path, *overrides):
    return config.load(None, [f"--data_path={corpus(tmp_path)}", "--task=spell", f"--out_dir={tmp_path / 'out'}",
                              "--min_len=20", "--max_len=60", "--block_size=64", "--held_out_size=16",
                              "--batch_size=8", "--max_iters=10", *overrides])


def job_of(cfg, tmp_path, events=None):
    return make_job(cfg, None, tmp_path / "out", (events if events is not None else []).append)


# ----------------------------------------------------------------------------- sentence files

def test_sentence_files_split_the_corpus_by_bytes_keep_the_lengths_and_are_reused(tmp_path):
    text = "\n".join(["x" * 80 + ".", "Short one.", *SENTENCES]) + "\n"
    (tmp_path / "a.txt").write_text(text, encoding="utf-8")
    files, cache = [tmp_path / "a.txt"], tmp_path / "cache"
    data = prepare_sentences(files, cache, 0.25, 20, 60, lambda e: None)
    assert not data.reused and sum(data.seen) == len(SENTENCES) + 2
    kept = list(data.train) + list(data.val)
    assert kept == SENTENCES  # "Short one." and the 81-character line (no boundary to cut at) are outside 20..60
    boundary = int(len(text.encode()) * 0.75)
    starts = [text.encode().index(s.encode()) for s in SENTENCES]
    assert list(data.train) == [s for s, at in zip(SENTENCES, starts) if at < boundary] and len(data.val) >= 1
    assert data.train[1] == list(data.train)[1] and len(data.train) == len(list(data.train))
    again = prepare_sentences(files, cache, 0.25, 20, 60, lambda e: None)
    assert again.reused and list(again.train) == list(data.train)
    other = prepare_sentences(files, cache, 0.25, 30, 60, lambda e: None)  # other lengths: rebuilt
    assert not other.reused and all(30 <= len(s) <= 60 for s in other.train)


def test_a_corpus_without_sentences_of_the_lengths_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("Too short.\nAlso short.\n" * 10, encoding="utf-8")
    with pytest.raises(ValueError, match="no sentence of 20..60 characters"):
        prepare_sentences([tmp_path / "a.txt"], tmp_path / "cache", 0.1, 20, 60, lambda e: None)


# ----------------------------------------------------------------------------- the vocabulary

def test_spell_task_text_round_trip_errors_and_state():
    task = SpellTask(CharTokenizer("abcdefghijklmnopqrstuvwxyzT ."))
    assert task.vocab_size == 3 + 29
    symbols = task.parse("  The  cat\nsat. ")  # whitespace normalised
    assert task.render(symbols) == "The cat sat."
    assert task.encode("The") == [s + 3 for s in task.parse("The")]
    with pytest.raises(ValueError, match="the input is empty"):
        task.parse(" \n ")
    with pytest.raises(ValueError, match="'!'"):
        task.parse("cat!")
    assert task.unknown_characters("cat! Q?!") == ["!", "Q", "?"]
    again = vocab_from_state(task.state())
    assert isinstance(again, SpellTask) and again.state() == task.state() and again.render(symbols) == "The cat sat."


# ----------------------------------------------------------------------------- the job

def test_each_epoch_draws_every_training_sentence_once_with_fresh_noise(tmp_path):
    cfg = spell_config(tmp_path, "--noise_rate=0.2")
    job = job_of(cfg, tmp_path)
    per_epoch = job.batches_per_epoch
    assert job.steps_per_epoch() == per_epoch
    drawn = [job._batch_sentences(i) for i in range(2 * per_epoch)]
    for epoch in range(2):
        sentences = [s for batch in drawn[epoch * per_epoch:(epoch + 1) * per_epoch] for s in batch]
        assert Counter(sentences) == Counter(job.train_set), "an epoch is every training sentence once"
    first, second = job.batch(0), job.batch(per_epoch)  # different noise, and (almost surely) order
    assert not torch.equal(first[0][:2], second[0][:2]) or not torch.equal(first[2], second[2])
    again = job_of(spell_config(tmp_path, "--noise_rate=0.2"), tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(job.batch(3)[:4], again.batch(3)[:4])), "a pure function of seed"
    lengths = [len(s) for s in drawn[0]]
    assert max(lengths) - min(lengths) < 60 - 20, "a batch holds sentences of similar length"


def test_held_out_noise_is_fixed_by_the_seed_and_the_baselines_are_scored(tmp_path):
    events = []
    job = job_of(spell_config(tmp_path, "--noise_edits=2"), tmp_path, events)
    same = job_of(spell_config(tmp_path, "--noise_edits=2"), tmp_path)
    other = job_of(spell_config(tmp_path, "--noise_edits=2", "--seed=7"), tmp_path)
    assert job.noisy == same.noisy and job.clean == same.clean and job.noisy != other.noisy
    assert all(n != c for n, c in zip(job.noisy, job.clean))
    noisy = spelling_scores(job.noisy, job.clean, job.noisy)
    assert job.baselines["noisy_cer"] == noisy["cer"] and job.baselines["noisy_word_acc_corrupted"] == 0.0
    assert job.baselines["dict_exact"] > 0.5  # every word of this corpus is in the corrector's dictionary
    task = [e for e in events if e["event"] == "task"][0]
    assert task["held_out"] == len(job.clean) and task["sentences"][0] == len(job.train_set)


def test_the_model_output_metrics_follow_what_it_writes(tmp_path):
    job = job_of(spell_config(tmp_path, "--noise_edits=2"), tmp_path)

    class Oracle(torch.nn.Module):  # stands in for a model: evaluation only sees correct()
        pass

    job.correct = lambda model, sentences, device, dtype: [dict(zip(job.noisy, job.clean)).get(s, s)
                                                           for s in sentences]
    job.held_out_loss = lambda model, device, dtype: 0.0
    m = job.evaluate(Oracle(), "cpu", torch.float32)
    assert m["val_exact"] == 1.0 and m["val_cer"] == 0.0 and m["val_clean_changed"] == 0.0
    assert m["val_word_acc_corrupted"] == 1.0 and m["val_word_acc_untouched"] == 1.0
    job.correct = lambda model, sentences, device, dtype: list(sentences)  # changes nothing: the noisy baseline
    m = job.evaluate(Oracle(), "cpu", torch.float32)
    assert m["val_cer"] == m["noisy_cer"] and m["val_exact"] == m["noisy_exact"]


@pytest.mark.parametrize("overrides, needle", [
    (["--tokenizer=gpt2"], "task 'spell' takes char or bpe"),
    (["--tokenizer=bpe", "--vocab_size=258"], "must be >= 259"),
    (["--noise_rate=1.5"], "noise_rate: 1.5"),
    (["--noise_edits=-1"], "noise_edits: -1"),
    (["--misspelling_rate=2"], "misspelling_rate: 2"),
    (["--max_len=10", "--min_len=20"], "max_len: 10"),
])
def test_spell_settings_are_validated(tmp_path, overrides, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(")):
        config.validate(spell_config(tmp_path, *overrides))


def test_block_size_must_hold_the_longest_sentence(tmp_path):
    with pytest.raises(ConfigError, match="block_size: 40 is too small"):
        job_of(spell_config(tmp_path, "--block_size=40"), tmp_path)


def test_misspellings_come_from_codespell(tmp_path):
    pytest.importorskip("codespell_lib")
    job = job_of(spell_config(tmp_path, "--noise_rate=0", "--misspelling_rate=1"), tmp_path)
    assert isinstance(job.noise, NoiseModel)
    assert any(n != c for n, c in zip(job.noisy, job.clean)), "words with a known misspelling are replaced"


# ----------------------------------------------------------------------------- the programs, end to end

def run(script, *args):
    r = cli(script, *args)
    assert "Traceback" not in r.stderr, r.stderr
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny spell model trained on SENTENCES until it corrects one edit in them."""
    tmp = tmp_path_factory.mktemp("spell")
    out = tmp / "out"
    r = run("train.py", "--task=spell", f"--data_path={corpus(tmp)}", f"--out_dir={out}", "--min_len=20",
            "--max_len=60", "--block_size=64", "--num_blocks=1", "--num_heads=2", "--embedding_dim=48",
            "--batch_size=32", "--max_iters=400", "--eval_interval=200", "--held_out_size=16", "--noise_edits=1",
            "--optimizer=adamw", "--lr=3e-3", "--min_lr=3e-4", "--warmup_iters=20", "--device=cpu",
            "--dtype=float32", "--log_interval=50")
    assert r.returncode == 0, r.stderr
    return out, r.stdout


@pytest.mark.slow
def test_train_reports_the_three_rows_and_sample_corrects_a_memorised_sentence(trained):
    out, stdout = trained
    assert "task: spell" in stdout and "dictionary corrector exact" in stdout
    final = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    for key in ("final_val_exact", "final_val_cer", "final_val_word_acc_corrupted", "final_val_word_acc_untouched",
                "final_val_clean_changed", "final_noisy_exact", "final_noisy_cer", "final_dict_exact", "final_dict_cer"):
        assert key in final, key
    ck = out / "best.pt"
    for noisy, args in (("The little boat sailed acrss the bay.", []), ("Seven geese walked slowyl past the mill.", []),
                        ("Thou art a vilain and a beggar.", ["--beam", "4"])):
        r = run("sample.py", "--checkpoint", ck, "--input", noisy, *args)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() in SENTENCES and r.stdout.strip() != noisy, (noisy, r.stdout)


@pytest.mark.slow
def test_sample_gives_clear_messages_and_best_effort_answers_on_bad_input(trained):
    out, _ = trained
    ck = out / "best.pt"
    r = run("sample.py", "--checkpoint", ck, "--input", "   ")
    assert r.returncode == 2 and "the input is empty" in r.stderr
    r = run("sample.py", "--checkpoint", ck, "--input", "The little boat sailed across the bay.%")
    assert r.returncode == 0 and "never saw '%'" in r.stderr and r.stdout.strip()
    r = run("sample.py", "--checkpoint", ck, "--input", "%%%")
    assert r.returncode == 2 and "no character this model knows" in r.stderr
    long = " ".join(SENTENCES[:3])  # 120 characters: past block_size 64, so corrected sentence by sentence
    r = run("sample.py", "--checkpoint", ck, "--input", long)
    assert r.returncode == 0 and "3 pieces" in r.stderr and r.stdout.strip() == long


@pytest.mark.slow
def test_visualize_draws_the_spell_models_cross_attention(trained, tmp_path):
    out, _ = trained
    r = run("visualize.py", "--checkpoint", out / "best.pt", "--input", "Thou art a vilain and a beggar.",
            "--out", tmp_path / "viz")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / "viz" / "attention.json").read_text())
    assert set(data["attentions"]) == {"encoder_self", "decoder_self", "cross"}
    assert data["output"] == "Thou art a villain and a beggar."
    assert "".join(data["tokens"]["source"]) == "Thou art a vilain and a beggar."  # one label per character
    assert (tmp_path / "viz" / "cross_layer0_head0.png").stat().st_size > 0


@pytest.mark.slow
def test_copy_margin_keeps_the_input_alike_in_evaluation_and_in_sample(trained):
    """copy_margin decides in SpellJob.correct (evaluation) as in lm.answers.answer (sample.py): a huge margin
    keeps every input as typed, none gives the greedy correction, and a margin between the two scores decides."""
    from lm.answers import answer
    from lm.checkpoint import load_model

    out, _ = trained
    model, task, cfg = load_model(out / "best.pt", "cpu")
    job = make_job(cfg, None, out, [].append)
    noisy = ["The little boat sailed acrss the bay.", "Seven geese walked slowyl past the mill."]
    cpu = torch.device("cpu")
    for margin, expected in ((None, [SENTENCES[0], SENTENCES[1]]), (1e9, noisy)):
        cfg.data.copy_margin = margin
        assert job.correct(model, noisy, cpu, torch.float32) == expected, margin
        assert [answer(model, task, cfg, s, cpu) for s in noisy] == expected, margin
    cfg.data.copy_margin = 0.0  # the greedy correction is the more likely: it stands
    assert job.correct(model, noisy, cpu, torch.float32) == [SENTENCES[0], SENTENCES[1]]
