"""Device and host page pools: torch tensors holding the KV of all layers, plus their allocators.

Device layout, per layer flashinfer's paged NHD layout:  data[layer] -> [pages, 2, page_size, heads, dim]
Host layout, a page contiguous across layers:           data[page]  -> [layers, 2, page_size, heads, dim]
The host layout makes a page one contiguous block of bytes, which is what the remote tier stores.
"""

from __future__ import annotations

import numpy as np
import torch

from storage.allocator import PageAllocator
from storage.layout import KVLayout


def cuda_available() -> bool:
    return torch.cuda.is_available()


class _PagePool:
    def __init__(self, layout: KVLayout, num_pages: int, data: torch.Tensor) -> None:
        self.layout = layout
        self.num_pages = num_pages
        self.allocator = PageAllocator(num_pages)
        self.data = data

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class DevicePool(_PagePool):
    """Paged KV memory that attention kernels read: on the GPU with CUDA, else on the CPU."""

    def __init__(
        self, layout: KVLayout, num_pages: int, device: str | torch.device | None = None
    ) -> None:
        if num_pages < 0:
            raise ValueError(f"num_pages must be >= 0, got {num_pages}")
        dev = (
            torch.device(device)
            if device is not None
            else torch.device("cuda" if cuda_available() else "cpu")
        )
        L, two, ps, H, D = layout.page_shape
        # one page past the allocator's: never handed out, it takes the KV writes of the padded
        # rows of a CUDA-graph batch (`scratch_page`)
        data = torch.zeros((L, num_pages + 1, two, ps, H, D), dtype=layout.dtype, device=dev)
        super().__init__(layout, num_pages, data)
        self.scratch_page = num_pages

    def layer(self, i: int) -> torch.Tensor:
        """Layer i's cache, [pages, 2, page_size, heads, dim] (a view; kernels write into it)."""
        return self.data[i]


class HostPool(_PagePool):
    """Host DRAM pages: pinned when CUDA is present (fast DMA), plain memory elsewhere."""

    def __init__(self, layout: KVLayout, num_pages: int, pin_memory: bool | None = None) -> None:
        if num_pages < 0:
            raise ValueError(f"num_pages must be >= 0, got {num_pages}")
        pin = cuda_available() if pin_memory is None else pin_memory
        data = torch.zeros((num_pages, *layout.page_shape), dtype=layout.dtype, pin_memory=pin)
        super().__init__(layout, num_pages, data)

    def page_bytes_view(self, page: int) -> memoryview:
        """The raw bytes of one host page (no copy): valid while the page stays allocated."""
        flat = self.data[page].reshape(-1).view(torch.uint8)
        return memoryview(flat.numpy()).cast("B")

    def write_page_bytes(self, page: int, payload: memoryview | bytes) -> None:
        """Overwrite one host page with raw bytes of exactly `layout.page_bytes`."""
        if len(payload) != self.layout.page_bytes:
            raise ValueError(
                f"page payload is {len(payload)} bytes, expected {self.layout.page_bytes}"
            )
        dst = self.data[page].reshape(-1).view(torch.uint8).numpy()
        np.copyto(dst, np.frombuffer(payload, dtype=np.uint8))
