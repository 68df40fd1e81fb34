"""Writing a batch's new K and V into one layer of the paged device pool.

A layer's pool view is [pages, 2 (K/V), page_size, kv_heads, head_dim]; token i goes to
(out_pages[i], :, out_offsets[i]). When k and v are adjacent views of one buffer (the fused QKV
projection's output: [q | k | v] per token, RoPE applied in place), one index_put writes both;
otherwise K and V are written apart.

FP8 pages (`--kv-cache-dtype fp8_e4m3`): K and V are stored as float8 e4m3 unscaled (scale 1,
the scheme vLLM uses when no scales are calibrated), saturated at +-448 (a plain cast would
make larger values NaN); attention upcasts on read (the torch backend on a CPU, flashinfer's
kernels on a GPU, where the fused RoPE-and-store kernel saturates the same way). The scheme is
part of the cache namespace (`kv_scheme`), so an engine with other pages never reads these.
"""

from __future__ import annotations

import torch

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0  # the largest finite float8 e4m3fn value
KV_DTYPE_NAMES = {
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float32": torch.float32,
    "fp8_e4m3": FP8,
}


def kv_cache_dtype(setting: str, model_dtype: torch.dtype, device: torch.device) -> torch.dtype:
    """The KV pages' dtype for `--kv-cache-dtype` (`auto`: the model's)."""
    if setting == "auto":
        return model_dtype
    if setting not in KV_DTYPE_NAMES:
        raise ValueError(f"kv_cache_dtype must be auto or one of {', '.join(KV_DTYPE_NAMES)}")
    dtype = KV_DTYPE_NAMES[setting]
    if dtype == FP8 and device.type == "cuda":
        check_fp8_capability(torch.cuda.get_device_capability(device))
    return dtype


def check_fp8_capability(capability: tuple[int, int]) -> None:
    """float8 pages on a GPU need its float8 conversions (compute capability 8.9: Ada, Hopper)."""
    if tuple(capability) < (8, 9):
        major, minor = capability
        raise ValueError(
            f"kv_cache_dtype fp8_e4m3 needs a GPU of compute capability 8.9 or newer, "
            f"this one is {major}.{minor}"
        )


def kv_scheme(dtype: torch.dtype) -> str:
    """How values are scaled in a page of `dtype` (part of the cache namespace)."""
    return "fp8-e4m3-unscaled-saturated" if dtype == FP8 else "plain"


def to_kv(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x in the pool's dtype (float8: saturated at +-448 first)."""
    if dtype == FP8:
        return x.clamp(-FP8_MAX, FP8_MAX).to(dtype)
    return x.to(dtype)


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
    kv[out_pages, 0, out_offsets] = to_kv(k, kv.dtype)
    kv[out_pages, 1, out_offsets] = to_kv(v, kv.dtype)
