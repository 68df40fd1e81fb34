"""Dense float32 projections on a CPU through oneDNN.

torch's `F.linear` sends a float32 product with few rows (a decode step's) to a BLAS kernel
that, on the CPUs we measured (AMD EPYC, 2 threads), reads the weights at 7-9 GB/s where the
memory gives 20 GB/s, and runs a 49,152-row LM head on one thread. oneDNN's linear (the kernel
torch's own compiler uses on a CPU) read them 1.3-2x faster at 1 and 8 rows in a microbenchmark
of the default model's shapes on that CPU. With a prefill's many rows it is the other way
round: at 1,048 rows torch's BLAS product was 7-20% faster on every shape, so from `BLAS_ROWS`
rows on the product goes there, unless the weight is packed.

A packed weight (`pack_weight`: reordered once into oneDNN's blocked layout, the values
unchanged) is faster than both from 8 rows on and level at 1: over the default model's 30 layers
of distinct weights (2-core EPYC, 2026-12-07) 42 against 57-62 ms at 8 rows, 267 against 293-310
at 131, 1,714-1,900 against 2,136-2,239 at 1,048, 32.0 against 32.3 at 1 (blocked for 16 to
1,024 rows it ran alike; blocked for 1 row, slower). Same float32 arithmetic; only the
summation order differs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

BLAS_ROWS = 256  # rows from which torch's own product is the faster (measured above)
PACK_ROWS = 128  # the row count packed weights are blocked for (16-1,024 measured alike)


def copy_budget_bytes() -> int:
    """What a model's CPU weight copies (dense copies of 4-bit layers, packed float32 weights)
    may take together: an eighth of the memory available now, 2 GiB at most."""
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return min(2 << 30, available // 8)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def can_pack(weight: torch.Tensor) -> bool:
    """Whether `pack_weight` applies: a plain float32 CPU weight and oneDNN's reorder present."""
    return (
        onednn_available()
        and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
        and weight.dtype == torch.float32
        and weight.device.type == "cpu"
        and not weight.is_mkldnn
    )


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """W [out, in] float32 reordered into oneDNN's blocked layout for `PACK_ROWS` rows: an opaque
    tensor of the same shape and values (`.to_dense()` gives W back) that only `dense_linear`
    multiplies by."""
    if not can_pack(weight):
        raise ValueError(f"cannot pack a {weight.dtype} weight on {weight.device} for oneDNN")
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), PACK_ROWS)


def dense_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x W^T (+ b) on a CPU: by a packed weight (`pack_weight`) in oneDNN at any row count; else
    oneDNN for a float32 product of fewer than `BLAS_ROWS` rows, torch's own product otherwise."""
    rows = x.numel() // weight.shape[1]
    if weight.is_mkldnn:
        if x.dtype != torch.float32:
            raise ValueError(f"a packed weight multiplies float32 inputs, got {x.dtype}")
    elif rows >= BLAS_ROWS or x.dtype != torch.float32 or not onednn_available():
        return F.linear(x, weight, bias)
    y = torch.ops.mkldnn._linear_pointwise(
        x.reshape(-1, weight.shape[1]), weight, bias, "none", [], ""
    )
    return y.reshape(*x.shape[:-1], weight.shape[0])


class OneDNNLinear(nn.Linear):
    """An nn.Linear (same parameters, same state dict) whose product runs in `dense_linear`, by
    a packed copy of its weight where `use_onednn` gave it one (`packed`)."""

    packed: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        packed = self.packed if x.dtype == torch.float32 else None
        return dense_linear(x, self.weight if packed is None else packed, self.bias)


def use_onednn(model: nn.Module, pack_budget_bytes: int = 0) -> int:
    """Turn every float32 CPU nn.Linear in `model` into an OneDNNLinear in place (the class
    changes, the parameters stay, tied ones included), the first ones packed while their packed
    copies stay within `pack_budget_bytes`. Returns how many changed."""
    if not onednn_available():
        return 0
    changed = packed = 0
    for module in model.modules():
        if (
            type(module) is nn.Linear
            and module.weight.device.type == "cpu"
            and module.weight.dtype == torch.float32
        ):
            module.__class__ = OneDNNLinear
            changed += 1
            size = module.weight.numel() * 4
            if can_pack(module.weight) and packed + size <= pack_budget_bytes:
                module.packed = pack_weight(module.weight)
                packed += size
    return changed
