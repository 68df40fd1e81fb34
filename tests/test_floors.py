"""A run's floor (radixkv.bench.floors.work_floor): each part prices its own work."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from radixkv.bench.floors import Work, work_floor

GPU = {"hbm_gbps": 3000.0, "matmul_tflops": 800.0, "h2d_pinned_gbps": 50.0}
SHAPE = dict(num_layers=4, attn_dim=256, w_bytes=2_000_000, kv_bytes_per_token=1024.0)


@st.composite
def works(draw) -> Work:
    prompt = draw(st.integers(1, 5000))
    cached = draw(st.integers(0, prompt))
    return Work(prompt, cached, draw(st.integers(0, cached)), draw(st.integers(0, 64)))


@given(st.lists(works(), min_size=1, max_size=20), st.integers(0, 1000))
def test_parts_price_their_own_work(work, steps):
    parts = work_floor(work, floors=GPU, decode_steps=steps, **SHAPE)
    computed = [w.prompt - w.cached for w in work]
    assert (parts["prefill"] > 0) == any(computed)
    assert parts["decode_weights"] == pytest.approx(steps * 2_000_000 / 3000e9)
    assert parts["loads"] == pytest.approx(sum(w.loaded for w in work) * 1024 / 50e9)
    assert (parts["decode_kv"] > 0) == any(w.output for w in work)
    # a faster card's floor is no longer; twice the matmul peak halves the prefill part
    fast = work_floor(work, floors={**GPU, "matmul_tflops": 1600.0}, decode_steps=steps, **SHAPE)
    assert fast["prefill"] == pytest.approx(parts["prefill"] / 2)


def test_prefill_counts_weights_and_causal_attention():
    # one 1,000-token prompt, nothing cached: 2 x parameters per token, plus attention's
    # 4 x layers x heads*dim per (query, key) pair over the causal half
    parts = work_floor([Work(1000, 0, 0, 0)], floors=GPU, decode_steps=0, **SHAPE)
    flops = 2 * 1_000_000 * 1000 + 4 * 4 * 256 * 1000**2 / 2
    assert parts["prefill"] == pytest.approx(flops / 800e12)
