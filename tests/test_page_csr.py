"""page_csr against the plain definition on random batches."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.attention.page_csr import page_csr


@settings(max_examples=80, deadline=None)
@given(
    page_size=st.sampled_from([1, 4, 16]),
    seqs=st.lists(st.tuples(st.integers(1, 100), st.integers(0, 3)), min_size=1, max_size=12),
)
def test_page_csr_matches_its_definition(page_size, seqs):
    tables, kv_lens, start = [], [], 0
    for n, spare in seqs:
        k = -(-n // page_size)
        tables.append(list(range(start, start + k + spare)))  # tables may run past the tokens
        kv_lens.append(n)
        start += k + spare + 7
    indptr, indices, last = page_csr(kv_lens, tables, page_size)
    want = [p for t, n in zip(tables, kv_lens, strict=True) for p in t[: -(-n // page_size)]]
    assert indices.tolist() == want
    counts = [-(-n // page_size) for n in kv_lens]
    assert indptr[0] == 0 and indptr.tolist()[1:] == list(itertools.accumulate(counts))
    for i, n in enumerate(kv_lens):
        k = indptr[i + 1] - indptr[i]
        assert (k - 1) * page_size + last[i] == n and 1 <= last[i] <= page_size


def test_a_short_table_is_refused():
    with pytest.raises(ValueError, match="page table"):
        page_csr([33], [[1, 2]], 16)
