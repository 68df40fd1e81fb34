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


def test_the_graph_paths_attention_reads_the_kv_the_model_wrote():
    """The CUDA-graph path's attention (engine/cuda_graph.py) keeps the backends' contract: the
    model's attention writes the step's K and V into the pool, then calls
    `forward(layer, q, batch)`, which only attends. Here its flashinfer wrapper is replaced by
    the torch decode over the same pool, so the decode logits must equal the torch backend's
    (a stale signature, as 9d55dfa left it, fails here on CPU before any GPU run)."""
    from engine.cuda_graph import GraphAttention
    from engine.llama import CausalLM
    from engine.model_config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="llama", vocab_size=64, hidden_size=64, intermediate_size=128,
        num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
    )  # fmt: skip
    model = CausalLM(cfg).eval()
    ps = 4
    pool = DevicePool(KVLayout(2, 2, 16, ps, torch.float32), 8, "cpu")
    reference = TorchPagedAttention(pool, 4, 2, 16)
    prompts = [[3, 1, 4, 1, 5, 9, 2], [6, 5, 3]]
    tables = [[0, 1], [2]]
    with torch.no_grad():
        model(
            ForwardBatch.build([(p, 0, t) for p, t in zip(prompts, tables, strict=True)], ps),
            reference,
        )
        decode = ForwardBatch.build([([7], 7, [0, 1]), ([8], 3, [2])], ps)
        want = model(decode, reference)

        class TorchDecodeWrapper:  # flashinfer's run(q, kv) over the planned decode batch
            def run(self, q, kv):
                return reference._decode(kv, q, decode).view(q.shape)

        got = model(decode, GraphAttention(pool, TorchDecodeWrapper(), 4, 16))
    torch.testing.assert_close(got, want)
