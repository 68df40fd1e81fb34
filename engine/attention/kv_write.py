"""Writing a batch's new K and V into one layer of the paged device pool.

A layer's pool view is [pages, 2 (K/V), page_size, kv_heads, head_dim]; token i goes to
(out_pages[i], :, out_offsets[i]). When k and v are adjacent views of one buffer (the fused QKV
projection's output: [q | k | v] per token, RoPE applied in place), one index_put writes both;
otherwise K and V are written apart.
"""

from __future__ import annotations

import torch


def kv_pair_view(k: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """k and v ([T, H, D] each) as one [T, 2, H, D] view when v starts right where k ends in the
    same storage with the same strides, else None."""
    if k.shape != v.shape or k.stride() != v.stride() or k.dtype != v.dtype or k.dim() != 3:
        return None
    t, heads, dim = k.shape
    if k.stride(2) != 1 or k.stride(1) != dim:
        return None
    if k.untyped_storage().data_ptr() != v.untyped_storage().data_ptr():
        return None
    if v.data_ptr() != k.data_ptr() + heads * dim * k.element_size():
        return None
    return k.as_strided((t, 2, heads, dim), (k.stride(0), heads * dim, dim, 1))


def store_kv(
    kv: torch.Tensor,
    out_pages: torch.Tensor,
    out_offsets: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
) -> None:
    """Write k and v ([T, kv_heads, head_dim]) into layer view `kv` at their output slots."""
    pair = kv_pair_view(k, v)
    if pair is not None and pair.dtype == kv.dtype:
        kv[out_pages, :, out_offsets] = pair  # advanced indices first: [T, 2, H, D]
        return
    kv[out_pages, 0, out_offsets] = k.to(kv.dtype)
    kv[out_pages, 1, out_offsets] = v.to(kv.dtype)
