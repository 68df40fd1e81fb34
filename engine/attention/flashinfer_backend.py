"""Paged attention with flashinfer (GPU): the pool's layer view [pages, 2, page_size, heads,
dim] is flashinfer's single-tensor NHD layout, so kernels read the device pool in place.

`prepare(batch)` plans once per forward (page tables -> CSR indptr/indices); each layer then
runs over the pool, where the model has written its new K/V. A batch of pure decodes uses the
decode kernel; anything with a prefill chunk uses a prefill kernel (FA2 for short extends and, by
default, for any over a cached prefix: see `SHORT_EXTEND_TOKENS`), which also serves decodes
mixed in.
"""

from __future__ import annotations

import torch

from engine.attention.kv_write import FP8
from engine.attention.page_csr import page_csr
from engine.attention.plan_fence import PlanFence
from engine.forward_batch import ForwardBatch
from storage import DevicePool


def flashinfer_available() -> bool:
    try:
        import flashinfer  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def decode_tensor_cores(num_heads: int, num_kv_heads: int, choice: bool | None = None) -> bool:
    """Whether decode runs flashinfer's tensor-core kernel: `choice` when given, else for
    query groups of 4 or more (on an H200, llama-3-8b's group of 4 decoded 10% faster at batch
    64 and 6% at batch 1 with it: benchmarks/gpu_engine.py)."""
    return choice if choice is not None else num_heads // num_kv_heads >= 4


# Extends of at most this many new tokens (the batch's sequences together) run flashinfer's FA2
# prefill kernel, which splits a long cached prefix over many CTAs: 16 new tokens over 4,096
# cached took 62 us a layer in the Hopper kernel that `auto` picks on an H100/H200, which gives
# each head one CTA over the whole prefix. Longer extends keep `auto` (the Hopper kernel is the
# faster one for long new sequences). The short-extend CUDA graphs run FA2 too, so a graph and
# the eager path it stands in for run one kernel.
SHORT_EXTEND_TOKENS = 256
# Any extend over a cached prefix runs FA2 too by default (`prefix_kernel="fa2"`). On an H100
# (2026-12-07, flashinfer 0.5.3) the Hopper kernel that `auto` picks faulted on such chunks
# while FA2 ran them; the cause was the planning race engine/attention/plan_fence.py now
# prevents (a replay with FA2 faulted the same way before the fence, and ran clean after it).
# `prefix_kernel="auto"` gives those chunks the Hopper kernel; benchmarks/gpu_prefix_attention.py
# checks it against FA2 and times both: the default changes when it has run on an H100.
PREFIX_KERNELS = ("fa2", "auto")


class FlashInferPagedAttention:
    def __init__(
        self,
        pool: DevicePool,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        workspace_mb: int = 256,
        tensor_cores: bool | None = None,
        prefix_kernel: str = "fa2",
    ) -> None:
        """`tensor_cores`: decode with flashinfer's tensor-core (prefill-style) kernel; None
        picks it by `decode_tensor_cores`. `prefix_kernel`: the prefill kernel of an extend
        longer than `SHORT_EXTEND_TOKENS` over a cached prefix (`PREFIX_KERNELS`, comment
        above)."""
        import flashinfer

        if pool.device.type != "cuda":
            raise ValueError("the flashinfer backend needs the device pool on a CUDA device")
        if prefix_kernel not in PREFIX_KERNELS:
            raise ValueError(
                f"prefix_kernel must be one of {PREFIX_KERNELS}, got {prefix_kernel!r}"
            )
        self.prefix_kernel = prefix_kernel
        self.pool = pool
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        workspace = torch.empty(workspace_mb << 20, dtype=torch.uint8, device=pool.device)
        self._fa2 = flashinfer.BatchPrefillWithPagedKVCacheWrapper(  # short or over a prefix
            workspace, "NHD", backend="fa2"
        )
        # float8 pages with bfloat16 queries: FA2 for every prefill (the Hopper kernel that
        # `auto` picks takes them only with float8 queries too); decode takes them in either
        self._prefill = (
            self._fa2
            if pool.data.dtype == FP8
            else flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD")
        )
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            workspace,
            "NHD",
            use_tensor_cores=decode_tensor_cores(num_heads, num_kv_heads, tensor_cores),
        )
        self._planned: tuple[ForwardBatch, object] | None = None  # held: ids of freed batches recur
        self._fence = PlanFence(pool.device)

    def prepare(self, batch: ForwardBatch, q_dtype: torch.dtype) -> None:
        ps = batch.page_size
        kv_lens = [p + e for p, e in zip(batch.prefix_lens, batch.extend_lens, strict=True)]
        indptr, indices, last = map(torch.from_numpy, page_csr(kv_lens, batch.page_tables, ps))
        pages_args = (indptr, indices, last, self.num_heads, self.num_kv_heads, self.head_dim, ps)
        dtypes = dict(q_data_type=q_dtype, kv_data_type=self.pool.data.dtype)
        if all(e == 1 for e in batch.extend_lens):
            self._fence.plan(self._decode, *pages_args, **dtypes)
            wrapper = self._decode
        else:
            qo = torch.tensor([0, *batch.extend_lens], dtype=torch.int32).cumsum(
                0, dtype=torch.int32
            )
            fa2 = sum(batch.extend_lens) <= SHORT_EXTEND_TOKENS or (
                self.prefix_kernel == "fa2" and any(batch.prefix_lens)
            )
            wrapper = self._fa2 if fa2 else self._prefill
            self._fence.plan(wrapper, qo, *pages_args, causal=True, **dtypes)
        self._planned = (batch, wrapper)

    def forward(self, layer: int, q: torch.Tensor, batch: ForwardBatch) -> torch.Tensor:
        if self._planned is None or self._planned[0] is not batch:
            self.prepare(batch, q.dtype)
        kv = self.pool.layer(layer)  # the batch's new K and V are in it already (the model's)
        out = self._planned[1].run(q.contiguous(), kv)
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)
