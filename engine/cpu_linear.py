"""Dense float32 projections on a CPU through oneDNN.

torch's `F.linear` sends a float32 product with few rows (a decode step's) to a BLAS kernel
that, on the CPUs we measured (AMD EPYC, 2 threads), reads the weights at 7-9 GB/s where the
memory gives 20 GB/s, and runs a 49,152-row LM head on one thread. oneDNN's linear (the kernel
torch's own compiler uses on a CPU) read them 1.3-2x faster at 1 and 8 rows in a microbenchmark
of the default model's shapes on that CPU. With a prefill's many rows it is the other way
round: at 1,048 rows torch's BLAS product was 7-20% faster on every shape, so from `BLAS_ROWS`
rows on the product goes there. Same float32 arithmetic; only the summation order differs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLAS_ROWS = 256  # rows from which torch's own product is the faster (measured above)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def dense_linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """x W^T (+ b) on a CPU: oneDNN for a float32 product of fewer than `BLAS_ROWS` rows, torch's
    own product otherwise."""
    rows = x.numel() // weight.shape[1]
    if rows >= BLAS_ROWS or x.dtype != torch.float32 or not onednn_available():
        return F.linear(x, weight, bias)
    y = torch.ops.mkldnn._linear_pointwise(
        x.reshape(-1, weight.shape[1]), weight, bias, "none", [], ""
    )
    return y.reshape(*x.shape[:-1], weight.shape[0])


class OneDNNLinear(nn.Linear):
    """An nn.Linear (same parameters, same state dict) whose product runs in `dense_linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense_linear(x, self.weight, self.bias)


def use_onednn(model: nn.Module) -> int:
    """Turn every float32 CPU nn.Linear in `model` into an OneDNNLinear in place (the class
    changes, the parameters stay, tied ones included). Returns how many changed."""
    if not onednn_available():
        return 0
    changed = 0
    for module in model.modules():
        if (
            type(module) is nn.Linear
            and module.weight.device.type == "cpu"
            and module.weight.dtype == torch.float32
        ):
            module.__class__ = OneDNNLinear
            changed += 1
    return changed
