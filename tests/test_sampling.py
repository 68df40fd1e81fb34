"""Sampling over any valid parameters and logits picks a token the parameters allow: never a
NaN distribution (a tiny temperature or top_p once crashed the engine step), never a token
outside top-k, and greedy when the temperature is 0."""

from __future__ import annotations

import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from engine.sampling import GREEDY_BELOW, SamplingParams, sample

FINITE = st.floats(-1e4, 1e4, allow_nan=False, width=32)


@settings(max_examples=300, deadline=None)
@given(
    logits=st.lists(FINITE, min_size=1, max_size=40),
    temperature=st.one_of(
        st.just(0.0), st.floats(5e-324, 1.7e308), st.sampled_from([1e-300, 1.0, 1.4e308])
    ),
    top_p=st.one_of(st.floats(5e-324, 1.0, exclude_min=False), st.just(1.0)),
    top_k=st.integers(0, 50),
    seed=st.integers(0, 2**32),
)
# found by CI: shifted by the max first, 0 and 1e-9 rounded to one value and both passed top-4
@example(logits=[0.0] * 30 + [1.0, 1.0, 1.0, 1e-9], temperature=1.0, top_p=1.0, top_k=4, seed=1)
def test_sample_picks_an_allowed_token(logits, temperature, top_p, top_k, seed):
    row = torch.tensor(logits, dtype=torch.float32)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    token = sample(row, params, torch.Generator().manual_seed(seed))
    assert 0 <= token < len(logits)
    if temperature < GREEDY_BELOW:
        assert row[token] == row.max()
    if top_k:
        kth = torch.topk(row, min(top_k, len(logits))).values[-1]
        assert row[token] >= kth


@settings(max_examples=200, deadline=None)
@given(
    logits=st.lists(FINITE, min_size=2, max_size=30),
    seen=st.lists(st.integers(0, 29), max_size=20),
    presence=st.floats(-2, 2),
    frequency=st.floats(-2, 2),
    bias=st.dictionaries(st.integers(0, 29), st.floats(-100, 100), max_size=4),
    banned=st.lists(st.integers(0, 29), max_size=3),
)
def test_row_adjustments_follow_openai_rules(logits, seen, presence, frequency, bias, banned):
    from engine.sampling import RowSampling

    vocab = len(logits)
    seen = [t % vocab for t in seen]
    bias = {t % vocab: b for t, b in bias.items()}
    banned = tuple({t % vocab for t in banned})
    row = torch.tensor(logits, dtype=torch.float32)
    params = SamplingParams(presence_penalty=presence, frequency_penalty=frequency, logit_bias=bias)
    got = row.clone()
    RowSampling(params, output_ids=seen, banned=banned).adjust(got)
    for t in range(vocab):
        n = seen.count(t)
        want = logits[t] + bias.get(t, 0.0) - frequency * n - presence * (n > 0)
        if t in banned:
            assert got[t] == float("-inf")
        else:
            assert abs(float(got[t]) - want) <= 1e-3 * max(1.0, abs(want)), (t, got[t], want)


def test_bad_penalties_and_biases_are_refused():
    import pytest

    for bad in (
        dict(presence_penalty=3),
        dict(frequency_penalty=-2.5),
        dict(logit_bias={5: 101}),
        dict(logit_bias={-1: 1}),
        dict(min_tokens=-1),
    ):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
