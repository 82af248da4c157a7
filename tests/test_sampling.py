import pytest
import torch

from lm.config import ModelConfig
from lm.generate import check_sampling, filter_logits, generate, sample_next
from lm.nn import GPT


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
