"""The model runner: owns the model, the attention backend and sampling. A `ForwardBatch` goes
in, each sequence's next token (or None for a prefill chunk that samples nothing) comes out.

It decides nothing about which requests run; that is the scheduler's. Its outputs reach the
host in one device-to-host copy per step for greedy rows (the step's one unavoidable sync).
`launch()` returns before that copy lands: a batch of plain greedy rows keeps its tokens on the
device too, so the engine can queue the next decode step on them before it reads them.
"""

from __future__ import annotations

import logging
import time

import torch

from engine.attention import TorchPagedAttention
from engine.attention.flashinfer_backend import (
    SHORT_EXTEND_TOKENS,
    FlashInferPagedAttention,
    flashinfer_available,
)
from engine.forward_batch import ForwardBatch
from engine.llama import CausalLM
from engine.sampling import SAMPLE_FAILED, sample
from storage import DevicePool

log = logging.getLogger(__name__)


def make_backend(kind: str, pool: DevicePool, model: CausalLM, prefix_kernel: str = "fa2"):
    """The attention backend by name (`auto`: flashinfer on CUDA when installed, else torch);
    `prefix_kernel`: flashinfer's kernel for a prefill chunk over a cached prefix."""
    cfg = model.config
    if kind == "auto":
        kind = "flashinfer" if pool.device.type == "cuda" and flashinfer_available() else "torch"
    if kind not in ("torch", "flashinfer"):
        raise ValueError(f"attention must be auto, torch or flashinfer, got {kind!r}")
    shape = (pool, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    if kind == "flashinfer":
        return FlashInferPagedAttention(*shape, prefix_kernel=prefix_kernel), kind
    return TorchPagedAttention(*shape), kind


class ModelRunner:
    """`graphs`: captured forwards (engine.cuda_graph.DecodeGraphs for decode steps,
    engine.extend_graph.ExtendGraphs for one sequence's short extend); a batch replays the first
    that can run it, else runs eagerly."""

    def __init__(
        self, model: CausalLM, backend, attention: str, graphs=(), vocab_limit: int | None = None
    ) -> None:
        """`vocab_limit`: sample only ids below it (a preset model serving a smaller real
        tokenizer: ids past the tokenizer's would decode to nothing)."""
        self.model, self.backend, self.attention = model, backend, attention
        self.vocab_limit = vocab_limit
        self.graphs = tuple(graphs)

    @torch.inference_mode()
    def warm_up(self, pool: DevicePool) -> float:
        """Run each eager attention path once (a decode step, a short extend, a long prefill)
        on the pool's scratch page, which no request owns, so that every kernel they need is
        compiled and loaded before the first request (flashinfer compiles a kernel at its first
        use; the first server on a fresh GPU machine kept its first requests waiting 70 s, most
        likely for that). Returns the seconds it took."""
        page_size = pool.layout.page_size
        started = time.perf_counter()
        scratch = pool.scratch_page

        def sequence(n: int, prefix: int) -> tuple[list[int], int, list[int]]:
            return [1] * n, prefix, [scratch] * -(-(prefix + n) // page_size)

        for sequences in (
            [sequence(1, 7), sequence(1, 30)],  # decode
            [sequence(16, 40)],  # a short extend over a prefix
            [sequence(SHORT_EXTEND_TOKENS + 1, 0)],  # a prefill past the short extends
        ):
            self.model(ForwardBatch.build(sequences, page_size, pool.device), self.backend)
        if pool.device.type == "cuda":
            torch.cuda.synchronize(pool.device)  # start-up only: the warm-up's time, logged once
        seconds = time.perf_counter() - started
        log.info("compiled and loaded the eager kernels in %.1f s", seconds)
        return seconds

    def run(self, batch: ForwardBatch) -> list[int | None]:
        """One forward over the batch, then a token for every sequence that samples."""
        return self.launch(batch).tolist()

    @torch.inference_mode()  # the logits are inference tensors: masked in place
    def launch(self, batch: ForwardBatch) -> StepTokens:
        """Queue one forward and its sampling. A batch of plain greedy rows (`plain_greedy`)
        picks its tokens on the device and starts their copy to the host without waiting for
        it; other batches sample on the host as `run` always did (their tokens are ready)."""
        graph = next((g for g in self.graphs if g.can_run(batch)), None)
        if graph is None and batch.layer_ready is not None and self.graphs:
            graph = self._graph_after_load(batch)
        logits = graph.run(batch) if graph is not None else self.model(batch, self.backend)
        if not plain_greedy(batch.sampling):
            return StepTokens(None, sample_rows(logits, batch.sampling, self.vocab_limit))
        return StepTokens.start_copy(mask_vocab(logits, self.vocab_limit).argmax(-1))

    def _graph_after_load(self, batch: ForwardBatch):
        """A graph for a batch that only waits on a host load, which then waits for the whole
        load (a stream wait, not a CPU sync). Graphs run short batches (a decode step, one
        short extend): their compute is small beside the copy, so one wait and a replay beat
        eager kernels launched layer by layer behind the copy (a 4,096-token host hit's TTFT
        is then the copy plus a replay)."""
        ready, batch.layer_ready = batch.layer_ready, None
        graph = next((g for g in self.graphs if g.can_run(batch)), None)
        if graph is None:
            batch.layer_ready = ready
            return None
        # the last layer's event: the whole load
        torch.cuda.current_stream(batch.input_ids.device).wait_event(ready[-1])
        return graph


def mask_vocab(logits: torch.Tensor, vocab_limit: int | None) -> torch.Tensor:
    """`logits` with ids from `vocab_limit` on excluded (in place; None: all kept)."""
    if vocab_limit is not None and vocab_limit < logits.shape[-1]:
        logits[:, vocab_limit:] = float("-inf")
    return logits


def plain_greedy(sampling: list | None) -> bool:
    """Every row samples, greedily, with nothing that adjusts its logits or reads them back
    (penalties, bias, min_tokens, a grammar, logprobs): its token is the logits' argmax."""
    return bool(sampling) and all(
        s is not None
        and s.params.greedy
        and not s.params.adjusts_logits
        and s.params.logprobs is None
        and s.constraint is None
        for s in sampling
    )


class StepTokens:
    """One step's sampled tokens: `ids` on the device (plain greedy batches; None otherwise),
    and the host list `tolist()` returns once their copy has landed."""

    def __init__(self, ids: torch.Tensor | None, host: list | torch.Tensor, event=None) -> None:
        self.ids, self._host, self._event = ids, host, event

    @classmethod
    def start_copy(cls, ids: torch.Tensor) -> StepTokens:
        """Tokens on the device, copied to pinned host memory behind the queued kernels."""
        if ids.device.type != "cuda":
            return cls(ids, ids)
        host = torch.empty(ids.shape, dtype=ids.dtype, pin_memory=True)
        host.copy_(ids, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(ids.device))
        return cls(ids, host, event)

    def tolist(self) -> list[int | None]:
        """The tokens on the host. Waits for the step's kernels: the step's one sync."""
        if self._event is not None:
            self._event.synchronize()
        return self._host if isinstance(self._host, list) else self._host.tolist()


@torch.inference_mode()  # the logits are inference tensors: adjusted in place
def sample_rows(
    logits: torch.Tensor, sampling: list | None, vocab_limit: int | None = None
) -> list[int | None]:
    """Sample row i with `sampling[i]` (a RowSampling), or None to skip it. A row's logits are
    first adjusted (ids from `vocab_limit` on excluded, then penalties, bias, bans, its
    grammar's mask). Greedy rows are picked together on the device and copied to the host
    once."""
    rows = len(logits)
    mask_vocab(logits, vocab_limit)
    sampling = sampling if sampling is not None else [None] * rows
    out: list[int | None] = [None] * rows
    wanted = [i for i, s in enumerate(sampling) if s is not None and s.params.logprobs is not None]
    raw = torch.log_softmax(logits[wanted].float(), -1) if wanted else None  # before adjusting
    for i, s in enumerate(sampling):
        if s is not None and (s.constraint is not None or s.params.adjusts_logits):
            _guarded(out, i, lambda s=s, i=i: s.adjust(logits[i]))
    greedy = [i for i, s in enumerate(sampling) if s is not None and s.params.greedy]
    greedy = [i for i in greedy if out[i] != SAMPLE_FAILED]
    if greedy:
        picked = logits[greedy].argmax(-1).tolist()  # one copy for all greedy rows
        for i, token in zip(greedy, picked, strict=True):
            out[i] = token
    for i, s in enumerate(sampling):
        if s is not None and not s.params.greedy and out[i] != SAMPLE_FAILED:
            _guarded(
                out,
                i,
                lambda s=s, i=i: out.__setitem__(i, sample(logits[i], s.params, s.generator)),
            )
    for row, i in enumerate(wanted):
        if out[i] not in (None, SAMPLE_FAILED):  # a sync per such row: only rows that ask
            k = sampling[i].params.logprobs
            best = []
            if k:
                top = torch.topk(raw[row], k)
                best = list(zip(top.indices.tolist(), top.values.tolist(), strict=True))
            sampling[i].logprob = (float(raw[row, out[i]]), best)
    return out


def _guarded(out: list, i: int, fn) -> None:
    """Run row i's sampling work; a failure fails that row only, not the batch's step."""
    try:
        fn()
    except Exception:
        log.exception("sampling failed for row %d; its request ends with an error", i)
        out[i] = SAMPLE_FAILED
