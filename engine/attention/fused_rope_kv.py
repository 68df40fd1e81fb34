"""RoPE and the KV write in one Triton kernel, over the fused QKV projection's output.

A decode step at batch 1 spends two small kernels a layer between the QKV projection and
attention: flashinfer's RoPE (q and k in place) and the index_put that stores k and v into the
paged pool. Each is a few microseconds of launch and tail for a few kilobytes of work. This kernel
does both: one program per (token, head) rotates a q head in place, or rotates a k head, stores it
(in place and into the pool) and stores the matching v head.

    qkv:       [T, (Hq + 2 Hkv) * D], per token [q heads | k heads | v heads]
    cos_sin:   [max positions, D] float32, cos of the angles then their sin (`cos_sin_table`)
    kv:        one layer's pool view [pages, 2 (K/V), page_size, Hkv, D]
    token t -> (out_pages[t], :, out_offsets[t]); the "rotate half" (neox) form.

The model runs it for batches of at most `FUSED_ROPE_KV_TOKENS` (`engine/llama.py`) when the
Triton kernels are on (`triton_kernels`, auto on CUDA). `benchmarks/gpu_small_kernels.py`
measures it against the two kernels it replaces; the tests check its arithmetic in Triton's
CPU interpreter. Into float8 pages it saturates K and V at +-448 as `kv_write.to_kv` does.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from engine.attention.kv_write import FP8, FP8_MAX


@triton.jit
def _rope_store_kv(
    qkv_ptr,
    pos_ptr,
    cs_ptr,
    kv_ptr,
    page_ptr,
    off_ptr,
    stride_t,
    stride_page,
    stride_kv,
    stride_slot,
    stride_head,
    HQ: tl.constexpr,
    HKV: tl.constexpr,
    D: tl.constexpr,
    KV_MAX: tl.constexpr,  # float8 pages: K and V saturated at +-KV_MAX (0: no clamp)
):
    t = tl.program_id(0)
    h = tl.program_id(1)  # [0, HQ): a q head; [HQ, HQ + HKV): a k head and its v head
    half = tl.arange(0, D // 2)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    cos = tl.load(cs_ptr + pos * D + half)
    sin = tl.load(cs_ptr + pos * D + D // 2 + half)
    row = qkv_ptr + t.to(tl.int64) * stride_t
    head = row + h * D
    x1 = tl.load(head + half).to(tl.float32)
    x2 = tl.load(head + D // 2 + half).to(tl.float32)
    r1 = (x1 * cos - x2 * sin).to(qkv_ptr.dtype.element_ty)
    r2 = (x2 * cos + x1 * sin).to(qkv_ptr.dtype.element_ty)
    tl.store(head + half, r1)
    tl.store(head + D // 2 + half, r2)
    if h >= HQ:
        kh = h - HQ
        page = tl.load(page_ptr + t).to(tl.int64)
        slot = tl.load(off_ptr + t).to(tl.int64)
        dst = kv_ptr + page * stride_page + slot * stride_slot + kh * stride_head
        full = tl.arange(0, D)
        v = tl.load(row + (HQ + HKV + kh) * D + full).to(tl.float32)
        k1, k2 = r1.to(tl.float32), r2.to(tl.float32)
        if KV_MAX > 0:  # as kv_write.to_kv: a plain cast would make larger values NaN
            k1 = tl.minimum(tl.maximum(k1, -KV_MAX), KV_MAX)
            k2 = tl.minimum(tl.maximum(k2, -KV_MAX), KV_MAX)
            v = tl.minimum(tl.maximum(v, -KV_MAX), KV_MAX)
        tl.store(dst + half, k1.to(kv_ptr.dtype.element_ty))
        tl.store(dst + D // 2 + half, k2.to(kv_ptr.dtype.element_ty))
        tl.store(dst + stride_kv + full, v.to(kv_ptr.dtype.element_ty))


def rope_store_kv(
    qkv: torch.Tensor,
    positions: torch.Tensor,
    cos_sin: torch.Tensor,
    kv: torch.Tensor,
    out_pages: torch.Tensor,
    out_offsets: torch.Tensor,
    num_q_heads: int,
    num_kv_heads: int,
    head_dim: int,
) -> None:
    """Rotate q and k of `qkv` in place and store k and v at each token's output slot of `kv`."""
    t = qkv.shape[0]
    if qkv.dim() != 2 or qkv.stride(1) != 1:
        raise ValueError("qkv must be [tokens, (Hq + 2 Hkv) * D] with unit stride per row")
    if qkv.shape[1] != (num_q_heads + 2 * num_kv_heads) * head_dim:
        raise ValueError("qkv's width does not match the head counts")
    if head_dim % 2 or head_dim & (head_dim - 1):
        raise ValueError("head_dim must be a power of two")
    if kv.dim() != 5 or kv.stride(4) != 1:
        raise ValueError("kv must be a layer view [pages, 2, page_size, Hkv, D]")
    if cos_sin.dtype != torch.float32 or cos_sin.shape[1] != head_dim:
        raise ValueError("cos_sin must be a float32 [positions, head_dim] table")
    if t == 0:
        return
    _rope_store_kv[(t, num_q_heads + num_kv_heads)](
        qkv,
        positions,
        cos_sin,
        kv,
        out_pages,
        out_offsets,
        qkv.stride(0),
        kv.stride(0),
        kv.stride(1),
        kv.stride(2),
        kv.stride(3),
        HQ=num_q_heads,
        HKV=num_kv_heads,
        D=head_dim,
        KV_MAX=FP8_MAX if kv.dtype == FP8 else 0.0,
    )
