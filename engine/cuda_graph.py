"""CUDA graphs of the decode forward: one launch per step instead of ~1,900.

For each batch size of a ladder up to `max_running`, the whole decode forward (embedding, every
layer with flashinfer's decode kernel in its CUDA-graph mode, the final norm, the LM head) is
captured once over fixed-address buffers: token ids, positions, KV output slots, and the page
table in CSR form. A step copies its batch into those buffers, lets flashinfer plan (CPU work
that fills the page-table buffers), and replays the graph of the next size up. Padded rows read
and write only the device pool's scratch page, which no request owns.

Prefill, mixed batches and decodes that wait on host loads layer by layer run eagerly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from engine.attention.flashinfer_backend import decode_tensor_cores
from engine.attention.page_csr import page_csr
from engine.attention.plan_fence import PlanFence
from engine.forward_batch import ForwardBatch, to_device
from engine.llama import CausalLM
from storage import DevicePool

log = logging.getLogger(__name__)


def batch_ladder(max_bs: int) -> list[int]:
    """1, 2, 4, 8, then steps of 8 up to `max_bs` (a padded row costs little)."""
    sizes = [b for b in (1, 2, 4) if b < max_bs]
    sizes += list(range(8, max_bs, 8))
    return sorted({*sizes, max_bs})


@dataclass
class StaticBatch:
    """The attributes the model and the backend read, as fixed-address views."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    out_pages: torch.Tensor
    out_offsets: torch.Tensor
    last_indices: torch.Tensor
    layer_ready: list | None = None

    def last_token_indices(self) -> torch.Tensor:
        return self.last_indices


class GraphAttention:
    """Decode attention for one captured batch size: flashinfer over the pool, whose new K and V
    the model's attention has written already."""

    def __init__(self, pool: DevicePool, wrapper, num_heads: int, head_dim: int) -> None:
        self.pool, self.wrapper = pool, wrapper
        self.num_heads, self.head_dim = num_heads, head_dim

    def forward(self, layer: int, q: torch.Tensor, batch) -> torch.Tensor:
        out = self.wrapper.run(q.contiguous(), self.pool.layer(layer))
        return out.reshape(q.shape[0], self.num_heads * self.head_dim)


class CaptureCost:
    """Time and device memory a set of graph captures took, logged once at start-up:

    with CaptureCost(dev, "the decode step for batch sizes 1,2,...") as cost:
        ...capture...
    cost.seconds, cost.memory_bytes
    """

    def __init__(self, dev: torch.device, what: str) -> None:
        self.dev, self.what = dev, what
        self.seconds, self.memory_bytes = 0.0, 0

    def __enter__(self) -> CaptureCost:
        self._started = time.perf_counter()
        self._free = torch.cuda.mem_get_info(self.dev)[0]
        return self

    def __exit__(self, *exc) -> None:
        torch.cuda.synchronize(self.dev)  # start-up only: the capture's cost, logged once
        self.seconds = time.perf_counter() - self._started
        self.memory_bytes = max(0, self._free - torch.cuda.mem_get_info(self.dev)[0])
        if exc[0] is None:
            log.info(
                "captured CUDA graphs of %s in %.1f s (%.0f MiB)",
                self.what,
                self.seconds,
                self.memory_bytes / 2**20,
            )


def capture_forward(model: CausalLM, batch, backend, mempool, dev: torch.device):
    """(graph, output): the model's forward over fixed-address `batch`, warmed up on a side
    stream (lazy initialisations stay outside the capture), then captured into `mempool`."""
    stream = torch.cuda.Stream(dev)
    stream.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(stream):
        for _ in range(2):
            model(batch, backend)
    torch.cuda.current_stream(dev).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, pool=mempool):
        output = model(batch, backend)
    return graph, output


class DecodeGraphs:
    def __init__(
        self,
        model: CausalLM,
        pool: DevicePool,
        max_bs: int,
        max_context: int,
        tensor_cores: bool | None = None,
    ) -> None:

        cfg = model.config
        self.pool = pool
        self.page_size = page_size = pool.layout.page_size
        self.sizes = batch_ladder(max_bs)
        self.max_bs = self.sizes[-1]
        self.max_pages_per_seq = -(-max_context // page_size)
        dev = pool.device
        n = self.max_bs
        self.input_ids = torch.zeros(n, dtype=torch.long, device=dev)
        self.positions = torch.zeros(n, dtype=torch.long, device=dev)
        self.out_pages = torch.full((n,), pool.scratch_page, dtype=torch.long, device=dev)
        self.out_offsets = torch.zeros(n, dtype=torch.long, device=dev)
        self.last_indices = torch.arange(n, device=dev)
        self.indptr = torch.zeros(n + 1, dtype=torch.int32, device=dev)
        self.indices = torch.zeros(n * self.max_pages_per_seq, dtype=torch.int32, device=dev)
        self.last_len = torch.ones(n, dtype=torch.int32, device=dev)
        self.workspace = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
        self.kv_dtype = pool.data.dtype
        self.q_dtype = model.lm_head.weight.dtype
        self.heads = (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
        self.tensor_cores = decode_tensor_cores(cfg.num_heads, cfg.num_kv_heads, tensor_cores)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self._fence = PlanFence(dev)
        self.wrappers: dict[int, object] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        mempool = torch.cuda.graph_pool_handle()
        what = f"the decode step for batch sizes {','.join(map(str, self.sizes))}"
        with CaptureCost(dev, what) as cost:
            for bs in reversed(self.sizes):  # largest first: smaller graphs reuse its memory
                self._capture(bs, model, mempool)
        self.capture_s, self.memory_bytes = cost.seconds, cost.memory_bytes

    def _capture(self, bs: int, model: CausalLM, mempool) -> None:
        import flashinfer

        cfg = model.config
        wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace,
            "NHD",
            use_cuda_graph=True,
            use_tensor_cores=self.tensor_cores,
            paged_kv_indptr_buffer=self.indptr[: bs + 1],
            paged_kv_indices_buffer=self.indices,
            paged_kv_last_page_len_buffer=self.last_len[:bs],
        )
        self.wrappers[bs] = wrapper
        batch = StaticBatch(
            self.input_ids[:bs],
            self.positions[:bs],
            self.out_pages[:bs],
            self.out_offsets[:bs],
            self.last_indices[:bs],
        )
        backend = GraphAttention(self.pool, wrapper, cfg.num_heads, cfg.head_dim)
        self._plan(bs, [], [])
        self.graphs[bs], self.outputs[bs] = capture_forward(
            model, batch, backend, mempool, self.pool.device
        )

    def can_run(self, batch: ForwardBatch) -> bool:
        """A pure decode batch within the ladder, with no host load to wait on per layer."""
        return (
            batch.layer_ready is None
            and batch.num_sequences <= self.max_bs
            and all(e == 1 for e in batch.extend_lens)
            and all(p + 1 <= self.max_pages_per_seq * self.page_size for p in batch.prefix_lens)
        )

    def _plan(self, bs: int, kv_lens: list[int], tables: list[list[int]]) -> None:
        """Page tables of the real rows, then padded rows on the scratch page. Nothing here
        waits for the GPU (the engine plans step N+1 while step N runs): the tables reach the
        device through pinned memory on the stream, and the one wait is the fence's
        (`engine/attention/plan_fence.py`): for the previous plan's copy of this wrapper's
        pinned split table, which this plan rewrites."""
        pad = bs - len(kv_lens)
        indptr, indices, last = page_csr(
            [*kv_lens, *[1] * pad], [*tables, *[[self.pool.scratch_page]] * pad], self.page_size
        )
        num_heads, num_kv_heads, head_dim = self.heads
        self._fence.plan(
            self.wrappers[bs],
            torch.from_numpy(indptr).pin_memory(),
            to_device(indices, self.pool.device),
            torch.from_numpy(last).pin_memory(),
            num_heads,
            num_kv_heads,
            head_dim,
            self.page_size,
            q_data_type=self.q_dtype,
            kv_data_type=self.kv_dtype,
        )

    def run(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [num_sequences, vocab] of a decode batch, by graph replay."""
        n = batch.num_sequences
        bs = next(b for b in self.sizes if b >= n)
        self.input_ids[:n].copy_(batch.input_ids)
        self.positions[:n].copy_(batch.positions)
        self.out_pages[:n].copy_(batch.out_pages)
        self.out_offsets[:n].copy_(batch.out_offsets)
        if bs > n:  # padded rows: token 0 at position 0, KV to the scratch page
            self.input_ids[n:bs].zero_()
            self.positions[n:bs].zero_()
            self.out_pages[n:bs].fill_(self.pool.scratch_page)
            self.out_offsets[n:bs].zero_()
        kv_lens = [p + 1 for p in batch.prefix_lens]
        self._plan(bs, kv_lens, batch.page_tables)
        self.graphs[bs].replay()
        return self.outputs[bs][:n]
