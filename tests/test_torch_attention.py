"""The torch backend's batched decode (every sequence's pages gathered side by side, padded and
masked, grouped query heads as rows of one matmul) equals its sequence-by-sequence path, over
random lengths, page tables and head groupings, in float32 and bfloat16 pools."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention import TorchPagedAttention
from engine.forward_batch import ForwardBatch
from storage import DevicePool, KVLayout


@settings(max_examples=60, deadline=None)
@given(
    lens=st.lists(st.integers(1, 70), min_size=1, max_size=6),
    kv_heads=st.sampled_from([1, 2, 3]),
    group=st.sampled_from([1, 3, 4]),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    seed=st.integers(0, 2**16),
)
def test_batched_decode_equals_one_sequence_at_a_time(lens, kv_heads, group, dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    ps, dim, heads = 4, 8, kv_heads * group
    layout = KVLayout(1, kv_heads, dim, ps, dtype)
    need = [-(-n // ps) + 1 for n in lens]  # one page more than needed: tables may be longer
    pool = DevicePool(layout, sum(need) + 1, "cpu")
    pool.layer(0).copy_(torch.randn(pool.layer(0).shape, generator=gen).to(dtype))
    order = torch.randperm(sum(need), generator=gen).tolist()  # scattered pages
    tables, at = [], 0
    for n in need:
        tables.append(order[at : at + n])
        at += n
    batch = ForwardBatch.build(
        [([1], n - 1, table) for n, table in zip(lens, tables, strict=True)], ps
    )
    attn = TorchPagedAttention(pool, heads, kv_heads, dim)
    q = torch.randn(len(lens), heads, dim, generator=gen).to(dtype)
    kv = pool.layer(0)
    got = attn._decode(kv, q, batch).float()
    want = attn._by_sequence(kv, q, batch).float()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)
