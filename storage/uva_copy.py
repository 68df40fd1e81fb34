"""Scattered page copies between the device pool and pinned host memory by one Triton kernel
that reads or writes host memory through its device-visible address (UVA): no CPU gather, no
staging buffer. shared/gpu/README.md measured this at 45-50 GB/s for scattered pages, against
4.7 GB/s for a CPU gather plus one copy.

A page's data for one layer is one contiguous block of `block` elements in both pools:
    device pool [layers, pages, ...]: block (layer l, page p) starts at (l * pages + p) * block
    host pool   [pages, layers, ...]: block (page p, layer l) starts at (p * layers + l) * block
Grid: (pages to copy, layers, chunks of the block).
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU machines: the portable path in transfer.py is used
    triton = None

CHUNK = 4096  # 32-bit words per program


def usable(device_data: torch.Tensor, host_data: torch.Tensor) -> bool:
    return (
        triton is not None
        and device_data.is_cuda
        and host_data.is_pinned()
        and (device_data[0, 0].numel() * device_data.element_size()) % 64 == 0  # 16-word blocks
    )


class _HostArray:
    """Pinned host memory described as a CUDA array, so torch can alias it on the device."""

    def __init__(self, t: torch.Tensor) -> None:
        self.__cuda_array_interface__ = {
            "shape": (t.numel() * t.element_size() // 4,),
            "typestr": "<i4",
            "data": (t.data_ptr(), False),
            "version": 3,
        }


_aliases: dict[int, torch.Tensor] = {}


def _host_words(host_data: torch.Tensor, device: torch.device) -> torch.Tensor:
    key = host_data.data_ptr()
    if key not in _aliases:  # one alias per host pool, made once
        _aliases[key] = torch.as_tensor(_HostArray(host_data), device=device)
    return _aliases[key]


if triton is not None:

    @triton.jit(do_not_specialize=["first_layer"])  # one compiled kernel for every layer
    def _copy_pages(
        src,
        dst,
        src_pages,
        dst_pages,
        num_layers,
        dev_pages,
        block,
        first_layer,
        SRC_IS_HOST: tl.constexpr,
        CHUNK: tl.constexpr,
    ):
        i = tl.program_id(0)
        layer = tl.program_id(1).to(tl.int64) + first_layer
        offs = tl.program_id(2) * CHUNK + tl.arange(0, CHUNK)
        mask = offs < block
        s = tl.load(src_pages + i).to(tl.int64)
        d = tl.load(dst_pages + i).to(tl.int64)
        if SRC_IS_HOST:
            src_start = (s * num_layers + layer) * block
            dst_start = (layer * dev_pages + d) * block
        else:
            src_start = (layer * dev_pages + s) * block
            dst_start = (d * num_layers + layer) * block
        # blocks are whole multiples of 16 words (asserted by the caller): say so, so the copy
        # uses 16-byte vector accesses; over PCIe, 4-byte accesses waste most of the link
        src_start = tl.multiple_of(src_start, 16)
        dst_start = tl.multiple_of(dst_start, 16)
        offs = tl.max_contiguous(tl.multiple_of(offs, 16), CHUNK)
        tl.store(dst + dst_start + offs, tl.load(src + src_start + offs, mask=mask), mask=mask)


def device_indices(src_pages, dst_pages, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.as_tensor(src_pages, dtype=torch.int64).to(device, non_blocking=True),
        torch.as_tensor(dst_pages, dtype=torch.int64).to(device, non_blocking=True),
    )


def copy(
    device_data: torch.Tensor,
    host_data: torch.Tensor,
    src_pages,
    dst_pages,
    to_device: bool,
    layers: range | None = None,
    indices: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> None:
    """Queue the copy on the current stream (asynchronous; host readers must synchronise).
    `layers`: copy only these consecutive layers (all by default); `indices`: the page index
    tensors already on the device (from `device_indices`), to reuse them across calls."""
    dev = device_data.device
    num_layers, dev_pages = device_data.shape[0], device_data.shape[1]
    layers = range(num_layers) if layers is None else layers
    block = device_data[0, 0].numel() * device_data.element_size() // 4
    device_words = device_data.view(-1).view(torch.int32)
    host_words = _host_words(host_data, dev)
    src_idx, dst_idx = indices if indices is not None else device_indices(src_pages, dst_pages, dev)
    grid = (len(src_pages), len(layers), triton.cdiv(block, CHUNK))
    src, dst = (host_words, device_words) if to_device else (device_words, host_words)
    args = (src, dst, src_idx, dst_idx, num_layers, dev_pages, block, layers.start)
    _copy_pages[grid](*args, SRC_IS_HOST=to_device, CHUNK=CHUNK)
