"""A GGUF's Q4_1 weights kept in 4 bits on the CPU: torch's int4 weight-only kernel multiplies
bfloat16 activations by them, reading a quarter of the bytes bfloat16 weights take (a decode
step on a CPU is bound by reading weights from memory).

Q4_1 stores each row in blocks of 32: a scale d, a minimum m and 4-bit q, the value being
d * q + m. Torch's kernel takes groups of 32 as (q - 8) * scale + zero, so scale = d and
zero = m + 8 d: the GGUF's own values (its fp16 d and m rounded to bfloat16, which is the only
change).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

GROUP = 32


def int4_available() -> bool:
    return hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def q4_1_blocks(data: np.ndarray, rows: int, cols: int) -> tuple[torch.Tensor, ...]:
    """(q [rows, cols] uint8, d [rows, cols / 32] float32, m [rows, cols / 32] float32) of a
    Q4_1 tensor's raw bytes (per block: fp16 d, fp16 m, 16 bytes holding q[j] in the low
    nibble and q[j + 16] in the high one)."""
    blocks = np.asarray(data).reshape(rows, cols // GROUP, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(rows, cols)
    return torch.from_numpy(q), torch.from_numpy(d), torch.from_numpy(m)


class Int4Linear(nn.Module):
    """y = x W^T with W held as Q4_1 blocks (no bias); x in bfloat16."""

    def __init__(self, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        self.register_buffer("packed", packed)
        # [cols / 32, rows, 2]: (scale, zero) per group
        scales = torch.stack([d.t(), (m + 8 * d).t()], -1).contiguous().to(torch.bfloat16)
        self.register_buffer("scales_and_zeros", scales)

    @classmethod
    def concat(cls, parts: list[tuple[torch.Tensor, ...]]) -> Int4Linear:
        """One layer computing several side by side (their rows stacked), e.g. q, k and v."""
        return cls(*(torch.cat([p[i] for p in parts]) for i in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features).to(torch.bfloat16),
            self.packed,
            GROUP,
            self.scales_and_zeros,
        )
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
