"""Paged attention in plain torch (CPU and GPU): the correctness baseline, and the CPU path.

For layer l the pool holds kv = pool.layer(l): [pages, 2 (K/V), page_size, kv_heads, head_dim].
The model has written new tokens' K/V at (out_pages, out_offsets); each sequence attends over
[0, prefix_len + extend_len) with a causal mask offset by its prefix. A decode batch (one new
token per sequence) runs as one batched attention over the sequences' pages gathered side by
side (padded to the longest, masked); any other batch runs sequence by sequence.
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
        # the decode batch whose gather index and length mask are built (once per forward)
        self._decode_plan: tuple[ForwardBatch, torch.Tensor, torch.Tensor] | None = None

    def forward(self, layer: int, q: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """q: [T, heads, dim] -> [T, heads * dim]."""
        kv = self.pool.layer(layer)  # the batch's new K and V are in it already (the model's)
        if all(e == 1 for e in batch.extend_lens) and batch.num_sequences > 0:
            return self._decode(kv, q, batch)
        return self._by_sequence(kv, q, batch)

    def _by_sequence(self, kv: torch.Tensor, q: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """Any batch, one sequence at a time (its K/V already written)."""
        out = torch.empty(q.shape[0], self.num_heads, self.head_dim, dtype=q.dtype, device=q.device)
        # on a CPU in float32 whatever the model's dtype (as `_decode`): exact, and cheap at
        # these sizes (a bfloat16 default model's mean KL to float32 over 512 positions: 7.8e-4,
        # 7.2e-4 with the former bfloat16 math path; top-1 99.2% both)
        work = torch.float32 if q.device.type == "cpu" else q.dtype
        start = 0
        for prefix, ext, table in zip(
            batch.prefix_lens, batch.extend_lens, batch.page_tables, strict=True
        ):
            total = prefix + ext
            pages = kv[torch.as_tensor(table, device=kv.device)]  # [n, 2, ps, H, D]
            keys = pages[:, 0].reshape(-1, self.num_kv_heads, self.head_dim)[:total].to(work)
            values = pages[:, 1].reshape(-1, self.num_kv_heads, self.head_dim)[:total].to(work)
            # no prefix: causal as SDPA means it (its mask is top-left aligned); else the
            # queries at [prefix, total) see keys at [0, their position]
            mask = None
            if prefix:
                query_pos = torch.arange(prefix, total, device=q.device)
                mask = torch.arange(total, device=q.device)[None, :] <= query_pos[:, None]
            # 4-D [1, H, T, D]: on a CPU only that shape reaches the flash kernel (3-D takes the
            # math path: 1.4 against 0.7-1.0 ms for 131 tokens of the default model, 115-124
            # against 20-38 ms for 1,048); the query groups share K/V (enable_gqa): no copy
            o = F.scaled_dot_product_attention(
                q[start : start + ext].transpose(0, 1)[None].to(work),
                keys.transpose(0, 1)[None],
                values.transpose(0, 1)[None],
                attn_mask=mask,
                is_causal=not prefix,
                scale=self.scale,
                enable_gqa=True,
            )
            out[start : start + ext] = o[0].transpose(0, 1)
            start += ext
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)

    def _plan_decode(self, batch: ForwardBatch, device) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, W] pages to gather (W: the longest sequence's page count; short tables padded
        with their own first page) and the [B, 1, 1, W * page_size] mask of real positions."""
        if self._decode_plan is not None and self._decode_plan[0] is batch:
            return self._decode_plan[1], self._decode_plan[2]
        ps = batch.page_size
        lens = [p + 1 for p in batch.prefix_lens]
        width = -(-max(lens) // ps)
        rows = []
        for n, table in zip(lens, batch.page_tables, strict=True):
            used = table[: -(-n // ps)]
            rows.append(used + [used[0]] * (width - len(used)))
        index = torch.tensor(rows, dtype=torch.long, device=device)
        positions = torch.arange(width * ps, device=device)
        mask = positions[None, :] < torch.tensor(lens, device=device)[:, None]
        self._decode_plan = (batch, index, mask[:, None, None, :])
        return index, self._decode_plan[2]

    def _decode(self, kv: torch.Tensor, q: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        """One token per sequence: q [B, heads, dim] -> [B, heads * dim]."""
        index, mask = self._plan_decode(batch, kv.device)
        b, width = index.shape
        # K and V each gathered whole pages at a time (index_select on the pool's K or V view:
        # contiguous [B * W, ps, kv_heads, dim], so no copy to reshape it), then in float32 as
        # [B, W * ps, kv_heads, dim]: CPU kernels for matmuls this small are faster there than
        # in bf16 (and it is exact)
        flat = index.flatten()
        keys = kv[:, 0].index_select(0, flat).float().view(b, -1, *kv.shape[3:])
        values = kv[:, 1].index_select(0, flat).float().view(b, -1, *kv.shape[3:])
        out = F.scaled_dot_product_attention(
            q[:, :, None, :].float(),  # [B, heads, 1, dim]
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=mask,
            scale=self.scale,
            enable_gqa=True,
        ).to(q.dtype)
        return out.reshape(b, self.num_heads * self.head_dim)
