"""The shape of one model's KV cache, from which every pool and page codec is sized."""

from __future__ import annotations

from dataclasses import dataclass

import torch

# dtype <-> stable one-byte codes used in page headers (never change an existing code).
DTYPE_CODES: dict[torch.dtype, int] = {
    torch.float32: 1,
    torch.float16: 2,
    torch.bfloat16: 3,
    torch.float8_e4m3fn: 4,
    torch.float8_e5m2: 5,
    torch.uint8: 6,
    torch.int8: 7,
}
CODE_DTYPES: dict[int, torch.dtype] = {v: k for k, v in DTYPE_CODES.items()}


@dataclass(frozen=True)
class KVLayout:
    """KV geometry: `num_layers` × (K, V) × `page_size` tokens × `num_kv_heads` × `head_dim`.

    A page is the unit of caching and transfer; its data for all layers is
    `page_bytes` bytes.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    page_size: int
    dtype: torch.dtype = torch.float16

    def __post_init__(self) -> None:
        for name in ("num_layers", "num_kv_heads", "head_dim", "page_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"KVLayout.{name} must be a positive integer, got {value!r}")
        if self.dtype not in DTYPE_CODES:
            supported = ", ".join(str(d).removeprefix("torch.") for d in DTYPE_CODES)
            raise ValueError(
                f"KVLayout.dtype {self.dtype} is not supported (use one of {supported})"
            )

    @property
    def page_shape(self) -> tuple[int, ...]:
        """Shape of one page in the host layout: [layers, 2 (K/V), page_size, heads, head_dim]."""
        return (self.num_layers, 2, self.page_size, self.num_kv_heads, self.head_dim)

    @property
    def page_numel(self) -> int:
        n = 1
        for d in self.page_shape:
            n *= d
        return n

    @property
    def page_bytes(self) -> int:
        return self.page_numel * self.dtype.itemsize

    def describe(self) -> str:
        """A stable text form of the layout, part of the cache namespace."""
        dtype = str(self.dtype).removeprefix("torch.")
        return (
            f"layers={self.num_layers};kv_heads={self.num_kv_heads};head_dim={self.head_dim};"
            f"page_size={self.page_size};dtype={dtype}"
        )
