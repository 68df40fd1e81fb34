"""store_kv: one write of adjacent K/V views equals two writes; anything else takes two writes."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention.kv_write import kv_pair_view, store_kv


@settings(max_examples=40, deadline=None)
@given(
    tokens=st.integers(1, 9),
    heads=st.sampled_from([(4, 1), (4, 2), (8, 8)]),
    dim=st.sampled_from([2, 8]),
    seed=st.integers(0, 2**16),
)
def test_one_write_of_the_qkv_views_equals_two_writes(tokens, heads, dim, seed):
    q_heads, kv_heads = heads
    g = torch.Generator().manual_seed(seed)
    qkv = torch.randn(tokens, (q_heads + 2 * kv_heads) * dim, generator=g)
    _, k, v = qkv.split([q_heads * dim, kv_heads * dim, kv_heads * dim], -1)
    k, v = k.view(tokens, kv_heads, dim), v.view(tokens, kv_heads, dim)
    assert kv_pair_view(k, v) is not None
    slots = torch.randperm(6 * 8, generator=g)[:tokens]  # distinct, as a batch's always are
    pages, offsets = slots // 8, slots % 8
    pool_one = torch.zeros(6, 2, 8, kv_heads, dim)
    pool_two = pool_one.clone()
    store_kv(pool_one, pages, offsets, k, v)
    pool_two[pages, 0, offsets] = k
    pool_two[pages, 1, offsets] = v
    assert torch.equal(pool_one, pool_two)


def test_views_that_are_not_adjacent_take_two_writes():
    k = torch.randn(3, 2, 4)
    v = torch.randn(3, 2, 4)
    assert kv_pair_view(k, v) is None  # separate buffers
    buf = torch.randn(3, 24)
    v_then_k = buf[:, 8:16].view(3, 2, 4), buf[:, :8].view(3, 2, 4)
    assert kv_pair_view(*v_then_k) is None  # v before k
    pool = torch.zeros(2, 2, 4, 2, 4)
    pages, offsets = torch.tensor([0, 1, 1]), torch.tensor([3, 0, 2])
    store_kv(pool, pages, offsets, k, v.to(torch.float64))  # dtypes differ: cast on write
    assert torch.equal(pool[pages, 0, offsets], k)
    assert torch.allclose(pool[pages, 1, offsets], v)
