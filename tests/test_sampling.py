import pytest
import torch

from lm.config import ModelConfig
from lm.generate import check_sampling, filter_logits, generate, sample_next
from lm.nn import GPT

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one intra-op thread is fastest


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    assert sample_next(logits, temperature=0).tolist() == [[1], [0]]


def test_top_k_keeps_exactly_k_even_with_ties():
    logits = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.sum().item() == 2


def test_top_k_only_samples_the_k_best():
    logits = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    g = torch.Generator().manual_seed(0)
    draws = {sample_next(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert draws == {0, 1}


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.8)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=1.0)).all()
    assert torch.isfinite(filter_logits(logits, top_p=1e-6)).sum() == 1  # always one token


def test_same_seed_same_samples():
    """generate() end to end on a GPT: the seed alone decides the tokens. At temperature 1 an untrained
    model is close to uniform over 11 tokens, so 2 x 50 tokens from another seed all equal by chance
    has probability about 11**-100."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=11, block_size=16, num_blocks=1, num_heads=2, embedding_dim=16)).eval()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])

    def sample(seed, **kwargs):
        g = torch.Generator().manual_seed(seed)
        return torch.cat(list(generate(model, prompt, 50, temperature=1.0, generator=g, **kwargs)), dim=1)  # (2, 50)

    a = sample(5)
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(sample(5), a)
    assert torch.equal(sample(5, top_k=11, top_p=1.0), a)  # filters that keep everything change nothing
    assert not torch.equal(sample(6), a)
    assert a.shape == (2, 50) and len(a.unique()) > 5 and not torch.equal(a[0], a[1])


@pytest.mark.parametrize("kwargs,needle", [
    (dict(temperature=-0.5, top_k=None, top_p=None, max_new_tokens=5), "temperature"),
    (dict(temperature=1.0, top_k=0, top_p=None, max_new_tokens=5), "top_k"),
    (dict(temperature=1.0, top_k=None, top_p=0.0, max_new_tokens=5), "top_p"),
    (dict(temperature=1.0, top_k=None, top_p=1.5, max_new_tokens=5), "top_p"),
    (dict(temperature=1.0, top_k=None, top_p=None, max_new_tokens=-1), "max_new_tokens"),
    (dict(temperature=float("nan"), top_k=None, top_p=None, max_new_tokens=1), "temperature"),
])
def test_bad_sampling_settings(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        check_sampling(**kwargs)


def tiny_gpt(block_size=16):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=11, block_size=block_size, num_blocks=2, num_heads=2, embedding_dim=16)).eval()


def run(model, prompt, new, seeds=None, **kwargs):
    """generate() to the end: (B, new) tokens; seeds: one generator per row, seeded so."""
    generator = None if seeds is None else [torch.Generator().manual_seed(s) for s in seeds]
    return torch.cat(list(generate(model, prompt, new, generator=generator, **kwargs)), dim=1)


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize("kwargs", [dict(temperature=1.0), dict(temperature=0.7, top_k=5, top_p=0.9)])
def test_a_row_with_its_own_generator_gets_the_tokens_it_gets_alone(use_cache, kwargs):
    """Row i of a batch, drawing from generator i, gives the tokens of a batch of one with that generator:
    within block_size (prompt 4 + 12 new) and past it (then 30 new: the window slides). Exact here; in
    general the rows' logits may round differently from a lone row's (see the next test)."""
    model = tiny_gpt()
    prompt = torch.randint(11, (3, 4), generator=torch.Generator().manual_seed(2))
    for new in (12, 30):
        batch = run(model, prompt, new, seeds=[5, 6, 7], use_cache=use_cache, **kwargs)  # (3, new)
        alone = [run(model, prompt[i : i + 1], new, seeds=[5 + i], use_cache=use_cache, **kwargs) for i in range(3)]
        assert torch.equal(batch, torch.cat(alone))
        # one generator for the whole batch: rows 1 and 2 draw other numbers than alone
        shared = torch.cat(list(generate(model, prompt, new, generator=torch.Generator().manual_seed(5),
                                         use_cache=use_cache, **kwargs)), dim=1)
        assert not torch.equal(shared[1:], batch[1:])


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_tokens_of_a_batch_equal_one_by_one(use_cache):
    """Temperature 0 in a batch of 4 gives each row's lone greedy tokens (within and past block_size).
    Only float rounding could differ between batch sizes (the next test bounds it); it would change a
    token only where the two largest logits are that close."""
    model = tiny_gpt()
    prompt = torch.randint(11, (4, 3), generator=torch.Generator().manual_seed(3))
    batch = run(model, prompt, 30, temperature=0.0, use_cache=use_cache)  # (4, 30)
    alone = torch.cat([run(model, prompt[i : i + 1], 30, temperature=0.0, use_cache=use_cache) for i in range(4)])
    assert torch.equal(batch, alone)
    assert len(batch.unique()) > 1


def test_a_batch_rows_logits_equal_a_lone_rows_up_to_rounding():
    """What batching guarantees exactly is the random draws; the logits of a row agree with its lone run's
    to float rounding (matrix products of 4 rows and of 1 may round differently)."""
    model = tiny_gpt()
    idx = torch.randint(11, (4, 12), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        cache = model.new_cache()
        steps = [model(idx[:, :3], cache=cache, last_only=True)[0]]
        steps += [model(idx[:, t : t + 1], cache=cache, last_only=True)[0] for t in range(3, 12)]
        batch = torch.cat(steps, dim=1)  # (4, 10, V)
        for i in range(4):
            cache = model.new_cache()
            steps = [model(idx[i : i + 1, :3], cache=cache, last_only=True)[0]]
            steps += [model(idx[i : i + 1, t : t + 1], cache=cache, last_only=True)[0] for t in range(3, 12)]
            torch.testing.assert_close(torch.cat(steps, dim=1)[0], batch[i], atol=1e-5, rtol=1e-5)


def test_one_generator_per_row_or_one_for_all():
    model = tiny_gpt()
    prompt = torch.zeros(3, 1, dtype=torch.long)
    with pytest.raises(ValueError, match="2 generators for a batch of 3 rows"):
        next(generate(model, prompt, 5, generator=[torch.Generator(), torch.Generator()]))
    assert run(model, prompt, 5, seeds=[1, 2, 3]).shape == (3, 5)
