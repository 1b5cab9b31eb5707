import pytest
import torch
from hypothesis import given, settings, strategies as st

from mtllm.modeling.pooling import cls_pool, eos_pool, get_pooler, mean_pool, span_mean_pool


def _batch(lengths, L, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(len(lengths), L, D, generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return hidden, mask


def test_mean_pool_matches_manual():
    hidden, mask = _batch([2, 4], 4)
    out = mean_pool(hidden, mask)
    assert torch.allclose(out[0], hidden[0, :2].mean(0))
    assert torch.allclose(out[1], hidden[1].mean(0))


def test_eos_and_cls_pick_last_and_first_real_positions():
    hidden, mask = _batch([2, 4], 4)
    assert torch.equal(eos_pool(hidden, mask)[0], hidden[0, 1])
    assert torch.equal(eos_pool(hidden, mask)[1], hidden[1, 3])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(cls_pool(hidden, left)[0], hidden[0, 2])
    assert torch.equal(eos_pool(hidden, left)[0], hidden[0, 3])


def test_all_masked_row_pools_to_zero():
    hidden, _ = _batch([1], 3)
    mask = torch.zeros(1, 3, dtype=torch.long)
    for pool in (mean_pool, eos_pool, cls_pool):
        assert torch.equal(pool(hidden, mask), torch.zeros(1, 3))


def test_unknown_pooler_names_choices():
    with pytest.raises(ValueError, match="mean"):
        get_pooler("max")


@settings(max_examples=50, deadline=None)
@given(lengths=st.lists(st.integers(1, 9), min_size=1, max_size=5), extra=st.integers(0, 4),
       seed=st.integers(0, 1000))
def test_pooling_ignores_padding_content_and_amount(lengths, extra, seed):
    L = max(lengths)
    hidden, mask = _batch(lengths, L + extra, seed=seed)
    noisy = hidden.clone()
    noisy[mask == 0] = 1e4  # whatever lies in the padding must not leak in
    for pool in (mean_pool, eos_pool, cls_pool):
        ref = pool(hidden[:, :L], mask[:, :L])
        assert torch.allclose(pool(noisy, mask), ref, atol=1e-5)


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_span_mean_pool_is_mean_of_each_span(data):
    N, L, K = data.draw(st.integers(1, 3)), data.draw(st.integers(2, 12)), data.draw(st.integers(1, 4))
    hidden = torch.randn(N, L, 2)
    spans = torch.zeros(N, K, 2, dtype=torch.long)
    for n in range(N):
        for k in range(K):
            a = data.draw(st.integers(0, L - 1))
            b = data.draw(st.integers(a + 1, L))
            spans[n, k] = torch.tensor([a, b])
    out = span_mean_pool(hidden, spans)
    assert out.shape == (N, K, 2)
    for n in range(N):
        for k in range(K):
            a, b = spans[n, k].tolist()
            assert torch.allclose(out[n, k], hidden[n, a:b].mean(0), atol=1e-6)
