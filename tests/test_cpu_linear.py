"""oneDNN products on a CPU (engine/cpu_linear.py): a packed weight keeps W's values and
multiplies like F.linear at every row count, within a budget."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from engine.cpu_linear import can_pack, dense_linear, pack_weight, use_onednn

packing = pytest.mark.skipif(
    not can_pack(torch.zeros(1, 1)), reason="this torch has no oneDNN weight reorder"
)


@packing
@settings(max_examples=25, deadline=None)
@given(
    rows=st.integers(1, 300),
    out=st.integers(1, 80),
    inp=st.integers(1, 80),
    bias=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_a_packed_weight_multiplies_like_f_linear(rows, out, inp, bias, seed):
    gen = torch.Generator().manual_seed(seed)
    w, x = torch.randn(out, inp, generator=gen), torch.randn(2, rows, inp, generator=gen)
    b = torch.randn(out, generator=gen) if bias else None
    packed = pack_weight(w)
    assert packed.shape == w.shape and torch.equal(packed.to_dense(), w)
    torch.testing.assert_close(dense_linear(x, packed, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4)


@packing
def test_packing_refuses_what_it_cannot_multiply():
    with pytest.raises(ValueError, match="cannot pack"):
        pack_weight(torch.zeros(4, 4, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="float32 inputs"):
        dense_linear(torch.zeros(2, 4, dtype=torch.bfloat16), pack_weight(torch.zeros(3, 4)))


@packing
def test_use_onednn_packs_within_its_budget_and_keeps_the_state_dict():
    model = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 8, bias=False))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 16)
    want = model(x)
    assert use_onednn(model, pack_budget_bytes=16 * 32 * 4) == 2  # room for the first only
    first, second = model
    assert first.packed is not None and second.packed is None
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
