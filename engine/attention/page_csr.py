"""The pages each sequence attends over, in the CSR form flashinfer plans from.

For sequence i with kv_lens[i] tokens in pages tables[i]: its pages are
indices[indptr[i] : indptr[i + 1]] (the first ceil(kv_lens[i] / page_size) of its table), and
its last page holds last_len[i] tokens. Built with numpy (no Python list of pages): for 64
sequences of 68 pages, 0.21-0.26 ms against 0.55-0.59 ms for the list-and-torch.tensor build it
replaced, on the CPU test machine (the same tensors; tests/test_page_csr.py).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np


def page_csr(
    kv_lens: Sequence[int], tables: Sequence[Sequence[int]], page_size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr [n + 1], indices [total pages], last_len [n]), int32."""
    lens = np.asarray(kv_lens, dtype=np.int64)
    pages = -(-lens // page_size)
    if any(len(t) < k for t, k in zip(tables, pages.tolist(), strict=True)):
        raise ValueError("each sequence needs a page table covering its tokens")
    indptr = np.zeros(len(lens) + 1, dtype=np.int32)
    np.cumsum(pages, out=indptr[1:])
    indices = np.fromiter(
        itertools.chain.from_iterable(
            itertools.islice(t, k) for t, k in zip(tables, pages.tolist(), strict=True)
        ),
        dtype=np.int32,
        count=int(indptr[-1]),
    )
    last = (lens - (pages - 1) * page_size).astype(np.int32)
    return indptr, indices, last
