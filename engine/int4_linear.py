"""A GGUF's Q4_1 weights kept in 4 bits on the CPU: torch's int4 weight-only kernel multiplies
bfloat16 activations by them, reading a quarter of the bytes bfloat16 weights take (a decode
step on a CPU is bound by reading weights from memory).

Q4_1 stores each row in blocks of 32: a scale d, a minimum m and 4-bit q, the value being
d * q + m. Torch's kernel takes groups of 32 as (q - 8) * scale + zero, so scale = d and
zero = m + 8 d: the GGUF's own values (its fp16 d and m rounded to bfloat16, which is the only
change).

That kernel is built for a decode step's few rows: at a prefill's many it computes at a third to
a half of a dense float32 product (default model's shapes, 2-core AVX2 EPYC: 3,072 x 576 at
1,048 rows 56 ms against 25 ms; at 64 rows 3.3 ms against 2.4). So the layer also keeps the
blocks as GGUF stores them (4-bit q two to a byte, float32 d and m: 0.75 bytes a weight) and, for
`DENSE_ROWS` rows or more, multiplies densely: by a dense copy kept once where memory allows
(`keep_dense_copies`: the default model's take 424 MB in float32, packed for oneDNN where it
can: `engine.cpu_linear.pack_weight`), else by the blocks dequantized for that one product
(0.8 ms for that shape). With fewer rows the 4-bit kernel runs.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.cpu_linear import can_pack, copy_budget_bytes, dense_linear, pack_weight

GROUP = 32
DENSE_ROWS = 64  # rows from which dequantize-then-dense beats the 4-bit kernel (measured above)
KEPT_DENSE_ROWS = 16  # with a dense copy kept: 3,072 x 576 at 16 rows 0.7 ms against 0.9


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
    """y = x W^T with W held as Q4_1 blocks (no bias): the 4-bit kernel for few rows (x cast to
    bfloat16 for it), a dequantized dense product for `DENSE_ROWS` or more."""

    def __init__(self, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor) -> None:
        super().__init__()
        self.out_features, self.in_features = q.shape
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 1)
        self.register_buffer("packed", packed)
        # [cols / 32, rows, 2]: (scale, zero) per group
        scales = torch.stack([d.t(), (m + 8 * d).t()], -1).contiguous().to(torch.bfloat16)
        self.register_buffer("scales_and_zeros", scales)
        # for the dense path: [rows, cols / 32, 16] bytes, q[j] low nibble, q[j + 16] high
        blocks = q.reshape(self.out_features, -1, GROUP)
        self.register_buffer("nibbles", (blocks[..., :16] | (blocks[..., 16:] << 4)).contiguous())
        self.register_buffer("d", d.float().contiguous())
        self.register_buffer("m", m.float().contiguous())
        # W kept dense for many rows (keep_dense_copies): float32 packed for oneDNN, or plain
        self.dense: torch.Tensor | None = None

    def dense_weight(self, dtype: torch.dtype) -> torch.Tensor:
        """W [out, in] in `dtype`: d * q + m per block, from the GGUF's values."""
        w = torch.empty((*self.nibbles.shape[:2], GROUP), dtype=dtype)
        w[..., :16] = self.nibbles & 0x0F
        w[..., 16:] = self.nibbles >> 4
        w.mul_(self.d[..., None].to(dtype)).add_(self.m[..., None].to(dtype))
        return w.view(self.out_features, self.in_features)

    @classmethod
    def concat(cls, parts: list[tuple[torch.Tensor, ...]]) -> Int4Linear:
        """One layer computing several side by side (their rows stacked), e.g. q, k and v."""
        return cls(*(torch.cat([p[i] for p in parts]) for i in range(3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        kept = self.dense is not None and self.dense.dtype == x.dtype
        if x.numel() >= (KEPT_DENSE_ROWS if kept else DENSE_ROWS) * self.in_features:
            return dense_linear(x, self.dense if kept else self.dense_weight(x.dtype))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.reshape(-1, self.in_features).to(torch.bfloat16),
            self.packed,
            GROUP,
            self.scales_and_zeros,
        )
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


def keep_dense_copies(model: nn.Module, dtype: torch.dtype, budget_bytes: int | None = None) -> int:
    """Give `model`'s 4-bit layers a dense copy in `dtype` (float32 packed for oneDNN) for
    many-row products while their total stays within `budget_bytes` (default:
    `copy_budget_bytes()`); the others dequantize per product. Returns the bytes kept."""
    if budget_bytes is None:
        budget_bytes = copy_budget_bytes()
    kept = 0
    for module in model.modules():
        if isinstance(module, Int4Linear):
            size = module.out_features * module.in_features * dtype.itemsize
            if kept + size > budget_bytes:
                break
            dense = module.dense_weight(dtype)
            module.dense = pack_weight(dense) if can_pack(dense) else dense
            kept += size
    return kept
