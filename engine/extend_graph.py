"""CUDA graphs of a short extend: one sequence's few new tokens over its cached prefix.

A prompt found cached up to its last page leaves a handful of tokens to compute before its first
token; run eagerly that forward is launch-bound (about 11 ms for an 8B model on an H200, against
a 4 ms weight read). For each size of a ladder (16, 32, ..., `max_tokens` new tokens) the
forward of one real sequence plus one padding sequence is captured with flashinfer's FA2
prefill kernel (the eager path's kernel for short extends) in its CUDA-graph mode: a graph of
size S serves 2..S real tokens, the padding sequence takes the other S + 1 - n (at least one,
so the captured shapes never change). The padding
sequence attends over, and writes into, only the pool's scratch page (repeated as often as its
length needs), which no request owns.
"""

from __future__ import annotations

import torch

from engine.attention.page_csr import page_csr
from engine.attention.plan_fence import PlanFence
from engine.cuda_graph import CaptureCost, GraphAttention, StaticBatch, capture_forward
from engine.forward_batch import ForwardBatch
from engine.llama import CausalLM
from storage import DevicePool


def extend_ladder(max_tokens: int) -> list[int]:
    """16, 32, 64, ... up to `max_tokens` (at least 16)."""
    sizes, s = [], 16
    while s < max_tokens:
        sizes.append(s)
        s *= 2
    return [*sizes, max(16, max_tokens)]


class ExtendGraphs:
    def __init__(
        self,
        model: CausalLM,
        pool: DevicePool,
        max_tokens: int,
        max_context: int,
    ) -> None:

        cfg = model.config
        self.pool = pool
        self.page_size = page_size = pool.layout.page_size
        self.sizes = extend_ladder(max_tokens)
        self.max_tokens = self.sizes[-1]
        self.max_context = max_context
        dev = pool.device
        n = self.max_tokens + 1  # + the padding sequence's one token at least
        pad_pages = -(-n // page_size)
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.out_pages = torch.full((n,), pool.scratch_page, dtype=torch.long, device=dev)
        self.out_offsets = torch.zeros(n, dtype=torch.long, device=dev)
        self.last_indices = torch.zeros(2, dtype=torch.long, device=dev)
        self.pad_positions = torch.arange(n, device=dev)  # the padding sequence's [0, S + 1 - n)
        self.pad_offsets = self.pad_positions % page_size
        self.qo_indptr = torch.zeros(3, dtype=torch.int32, device=dev)
        self.kv_indptr = torch.zeros(3, dtype=torch.int32, device=dev)
        max_pages = -(-max_context // page_size) + pad_pages
        self.indices = torch.zeros(max_pages, dtype=torch.int32, device=dev)
        self.last_len = torch.ones(2, dtype=torch.int32, device=dev)
        self.workspace = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
        self.kv_dtype, self.q_dtype = pool.data.dtype, model.lm_head.weight.dtype
        self.heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._fence = PlanFence(dev)
        self.wrappers: dict[int, object] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        mempool = torch.cuda.graph_pool_handle()
        sizes = ",".join(map(str, self.sizes))
        with CaptureCost(dev, f"short extends (one sequence, up to {sizes} new tokens)") as cost:
            for size in reversed(self.sizes):  # largest first: smaller graphs reuse its memory
                self._capture(size, model, mempool)
        self.capture_s, self.memory_bytes = cost.seconds, cost.memory_bytes

    def _capture(self, size: int, model: CausalLM, mempool) -> None:
        import flashinfer

        cfg, rows = model.config, size + 1
        self.wrappers[size] = flashinfer.BatchPrefillWithPagedKVCacheWrapper(
            self.workspace,
            "NHD",
            use_cuda_graph=True,
            qo_indptr_buf=self.qo_indptr,
            paged_kv_indptr_buf=self.kv_indptr,
            paged_kv_indices_buf=self.indices,
            paged_kv_last_page_len_buf=self.last_len,
            backend="fa2",  # the eager path's kernel for short extends: SHORT_EXTEND_TOKENS
        )
        batch = StaticBatch(
            self.input_ids[:rows],
            self.positions[:rows],
            self.out_pages[:rows],
            self.out_offsets[:rows],
            self.last_indices,
        )
        backend = GraphAttention(self.pool, self.wrappers[size], cfg.num_heads, cfg.head_dim)
        # captured with the real sequence on the scratch page too
        self._plan(size, size, 0, [self.pool.scratch_page] * -(-size // self.page_size))
        self.graphs[size], self.outputs[size] = capture_forward(
            model, batch, backend, mempool, self.pool.device
        )

    def can_run(self, batch: ForwardBatch) -> bool:
        """One sequence of 2..max_tokens new tokens, no host load to wait on per layer."""
        return (
            batch.layer_ready is None
            and batch.num_sequences == 1
            and 2 <= batch.extend_lens[0] <= self.max_tokens
            and batch.prefix_lens[0] + batch.extend_lens[0] <= self.max_context
        )

    def _plan(self, size: int, n: int, prefix: int, table: list[int]) -> None:
        """The real sequence: n tokens over `prefix`; the padding one: size + 1 - n tokens."""
        ps, pad = self.page_size, size + 1 - n
        indptr, indices, last = page_csr(
            [prefix + n, pad], [table, [self.pool.scratch_page] * -(-pad // ps)], ps
        )
        num_heads, num_kv_heads, head_dim = self.heads
        self._fence.plan(
            self.wrappers[size],
            torch.tensor([0, n, size + 1], dtype=torch.int32),
            torch.from_numpy(indptr),
            torch.from_numpy(indices),
            torch.from_numpy(last),
            num_heads,
            num_kv_heads,
            head_dim,
            ps,
            causal=True,
            q_data_type=self.q_dtype,
            kv_data_type=self.kv_dtype,
        )

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [1, vocab] of the sequence's last new token, by graph replay."""
        n = batch.extend_lens[0]
        size = next(s for s in self.sizes if s >= n)
        rows, pad = size + 1, size + 1 - n
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        self.out_pages[:n].copy_(batch.out_pages)
        self.out_offsets[:n].copy_(batch.out_offsets)
        # the padding sequence: token 0 at positions [0, pad), its KV to the scratch page
        self.input_ids[n:rows].zero_()
        self.positions[n:rows].copy_(self.pad_positions[:pad])
        self.out_pages[n:rows].fill_(self.pool.scratch_page)
        self.out_offsets[n:rows].copy_(self.pad_offsets[:pad])
        self.last_indices[0].fill_(n - 1)
        self.last_indices[1].fill_(rows - 1)
        self._plan(size, n, batch.prefix_lens[0], batch.page_tables[0])
        self.graphs[size].replay()
        return self.outputs[size][:1]
