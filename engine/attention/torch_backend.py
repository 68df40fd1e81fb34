"""Reference paged attention in plain torch (CPU and GPU): the correctness baseline.

For layer l the pool holds kv = pool.layer(l): [pages, 2 (K/V), page_size, kv_heads, head_dim].
New tokens' K/V are written at (out_pages, out_offsets); then each sequence attends over
[0, prefix_len + extend_len) with a causal mask offset by its prefix.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from engine.forward_batch import ForwardBatch
from storage import DevicePool


class TorchPagedAttention:
    def __init__(self, pool: DevicePool, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        self.pool = pool
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = head_dim**-0.5

    def forward(
        self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: ForwardBatch
    ) -> torch.Tensor:
        """q: [T, heads, dim]; k, v: [T, kv_heads, dim] -> [T, heads * dim]."""
        kv = self.pool.layer(layer)
        kv[batch.out_pages, 0, batch.out_offsets] = k.to(kv.dtype)
        kv[batch.out_pages, 1, batch.out_offsets] = v.to(kv.dtype)
        group = self.num_heads // self.num_kv_heads
        out = torch.empty(q.shape[0], self.num_heads, self.head_dim, dtype=q.dtype, device=q.device)
        start = 0
        for prefix, ext, table in zip(
            batch.prefix_lens, batch.extend_lens, batch.page_tables, strict=True
        ):
            total = prefix + ext
            pages = kv[torch.as_tensor(table, device=kv.device)]  # [n, 2, ps, H, D]
            keys = pages[:, 0].reshape(-1, self.num_kv_heads, self.head_dim)[:total].to(q.dtype)
            values = pages[:, 1].reshape(-1, self.num_kv_heads, self.head_dim)[:total].to(q.dtype)
            keys = keys.repeat_interleave(group, dim=1)
            values = values.repeat_interleave(group, dim=1)
            query_pos = torch.arange(prefix, total, device=q.device)
            mask = (
                torch.arange(total, device=q.device)[None, :] <= query_pos[:, None]
            )  # [ext, total]
            o = F.scaled_dot_product_attention(
                q[start : start + ext].transpose(0, 1),  # [H, ext, D]
                keys.transpose(0, 1),
                values.transpose(0, 1),
                attn_mask=mask,
                scale=self.scale,
            )
            out[start : start + ext] = o.transpose(0, 1)
            start += ext
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)
