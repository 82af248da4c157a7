import pytest
import torch

from lm.generate import check_sampling, filter_logits, sample_next


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
    logits = torch.randn(1, 50)
    a = [sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5)).item() for _ in range(3)]
    b = [sample_next(logits, 1.0, generator=torch.Generator().manual_seed(5)).item() for _ in range(3)]
    assert a == b


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
