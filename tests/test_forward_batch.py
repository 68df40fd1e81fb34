"""A ForwardBatch's KV slots, positions and last-token indices, built vectorised, against the
definition token by token (hypothesis over ragged batches and page sizes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.forward_batch import ForwardBatch


@st.composite
def batches(draw):
    ps = draw(st.sampled_from([1, 2, 4, 16]))
    seqs = []
    for _ in range(draw(st.integers(1, 6))):
        prefix, ext = draw(st.integers(0, 40)), draw(st.integers(1, 40))
        pages = -(-(prefix + ext) // ps) + draw(st.integers(0, 2))  # spare pages allowed
        table = draw(st.lists(st.integers(0, 10_000), min_size=pages, max_size=pages))
        seqs.append((list(range(ext)), prefix, table))
    return ps, seqs


@settings(max_examples=200, deadline=None)
@given(batches())
def test_slots_positions_and_last_tokens_match_the_definition(case):
    ps, seqs = case
    b = ForwardBatch.build(seqs, ps)
    pages, offsets, positions, last, t = [], [], [], [], 0
    for new, prefix, table in seqs:
        for p in range(prefix, prefix + len(new)):
            pages.append(table[p // ps])
            offsets.append(p % ps)
            positions.append(p)
        t += len(new)
        last.append(t - 1)
    assert b.out_pages.tolist() == pages
    assert b.out_offsets.tolist() == offsets
    assert b.positions.tolist() == positions
    assert b.last_token_indices().tolist() == last


def test_a_page_table_too_short_for_its_tokens_is_refused():
    with pytest.raises(ValueError, match="cannot hold"):
        ForwardBatch.build([([1, 2, 3], 14, [0])], 16)
