"""The continuous-batching scheduler on the HiRadixTree.

One `step()`:
  1. apply finished remote reads (`cache.poll()`);
  2. admit waiting requests, cache-aware: a request whose remote prefetch is still in flight waits
     without blocking the others; among ready ones, the longest cached prefix goes first unless
     someone has waited `starvation_steps` steps; one whose prompt shares a long prefix with a
     request still prefilling waits for that prefix to be cached. Admission matches the prefix,
     locks it, loads its host part to the device and takes its device pages as the start of the
     page table;
  3. schedule tokens under `max_batch_tokens`: every running request has pending tokens
     (all_ids[num_computed:]); those with one (decodes) go first, prefills get chunks of the rest;
  4. allocate device pages; when the pool runs dry, preempt the newest request: its computed
     pages go into the tree (nothing recomputed if it comes back soon), it rejoins the queue front;
  5. one forward over the batch; sample where a request's pending tokens are all computed; a
     finished prefill hands its prompt's pages to the tree at once (still locked by the request);
     stop on EOS, stop tokens, stop strings or max_tokens, and hand finished pages to the tree.

Pages: a request's page table is tree pages it matched (locked) followed by pages it allocated;
`cache.insert` takes the full ones over, `cache.free` takes back a partial last page. The cache is
the only owner that frees pages.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Callable

from engine.forward_batch import ForwardBatch
from engine.request import Request, State
from engine.sampling import sample
from radixkv import HiRadixCache
from storage import OutOfPages

_PREFILL_SAMPLE_MIN_TOKENS = 64  # steps with fewer prefill tokens say little about its speed
_DEFER_MIN_TOKENS = 64  # a shared, still-uncached prefix worth waiting for (see _admit)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix: a binary search over slice comparisons (C loops)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Scheduler:
    def __init__(
        self,
        model,
        backend,
        cache: HiRadixCache,
        *,
        max_batch_tokens: int = 2048,
        max_running: int = 64,
        prefix_caching: bool = True,
        eos_token_ids: tuple[int, ...] = (),
        detokenize: Callable[[list[int]], str] | None = None,
        starvation_steps: int = 32,
        check_integrity: bool = False,
    ) -> None:
        if max_batch_tokens < 1 or max_running < 1:
            raise ValueError("max_batch_tokens and max_running must be >= 1")
        self.model, self.backend, self.cache = model, backend, cache
        self.page_size = cache.page_size
        self.max_batch_tokens, self.max_running = max_batch_tokens, max_running
        self.prefix_caching = prefix_caching
        self.eos_token_ids = set(eos_token_ids)
        self.detokenize = detokenize
        self.starvation_steps = starvation_steps
        self.check_integrity = check_integrity
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.steps = 0
        self._waited: dict[int, int] = {}
        self.preemptions = 0
        # called with every request that finishes, whatever the reason (a server's output hook)
        self.on_finish: Callable[[Request], None] | None = None

    # ---- requests ----------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        if self.prefix_caching and self.cache.store is not None:
            # remote -> host while it waits; held there until it attaches or finishes
            req.prefetch = self.cache.prefetch(req.prompt_ids[:-1], hold=True)
        self.waiting.append(req)
        self._waited[req.rid] = self.steps

    def abort(self, req: Request) -> None:
        """Cancel a request wherever it is; its pages go back (computed ones into the tree)."""
        if req.state == State.FINISHED:
            return
        if req in self.running:
            self.running.remove(req)
            self._release(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, "abort")

    def wait_for_remote(self, timeout_s: float = 0.05) -> None:
        """For a caller whose step made no progress with nothing running (the waiting requests'
        prefetches are in flight): block until a remote operation completes, at most
        `timeout_s`, instead of spinning, which would also starve the cache's I/O thread."""
        if self.cache.store is not None and self.cache.controller.inflight:
            self.cache.wait_one(timeout_s)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- one step ----------------------------------------------------------------------------
    def step(self) -> list[Request]:
        """Run one batch; returns the requests that produced a token (or finished) this step."""
        self.steps += 1
        self.cache.poll()
        self._admit()
        plan = self._plan()
        if not plan:
            return []
        batch = ForwardBatch.build(
            [
                (r.all_ids[r.num_computed : r.num_computed + n], r.num_computed, r.page_table)
                for r, n in plan
            ],
            self.page_size,
            self.cache.device_pool.device,
        )
        batch.layer_ready = self.cache.controller.take_layer_events()
        started = time.perf_counter()
        logits = self.model(batch, self.backend)
        progressed = []
        for (req, n), row in zip(plan, logits, strict=True):
            req.num_computed += n
            if req.num_computed < len(req.all_ids):
                continue  # a prefill chunk: more to compute before sampling
            if self.prefix_caching and len(req.output_ids) == 0:
                self._cache_prompt(req)  # requests queued behind it can reuse it right away
            token = sample(row, req.params, req.generator)  # int(): the step's one GPU sync
            req.output_ids.append(token)
            if req.first_token_at is None:
                req.first_token_at = time.perf_counter()
            progressed.append(req)
            reason = self._stop_reason(req, token)
            if reason:
                self.running.remove(req)
                self._release(req)
                self._finish(req, reason)
        prefill = sum(n for _, n in plan if n > 1)
        if prefill >= _PREFILL_SAMPLE_MIN_TOKENS:  # sampling synced: the time is the forward's
            self.cache.cost.observe_prefill(prefill, time.perf_counter() - started)
        if self.check_integrity:
            self.cache.check_integrity()
        return progressed

    def _stop_reason(self, req: Request, token: int) -> str | None:
        p = req.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if p.stop and self.detokenize is not None:
            text = self.detokenize(req.output_ids)
            for s in p.stop:
                cut = text.find(s)
                if cut >= 0:
                    req.text = text[:cut]
                    return "stop"
        if len(req.output_ids) >= p.max_tokens:
            return "length"
        return None

    def _finish(self, req: Request, reason: str) -> None:
        req.state, req.finish_reason = State.FINISHED, reason
        self._waited.pop(req.rid, None)
        self.cache.release_prefetch(req.prefetch)
        if self.detokenize is not None and not req.text:
            req.text = self.detokenize(req.output_ids)
        if self.on_finish is not None:
            self.on_finish(req)

    # ---- admission ---------------------------------------------------------------------------
    def _admit(self) -> None:
        free_slots = self.max_running - len(self.running)
        if free_slots <= 0:
            return
        # a bounded FIFO window: admission never re-matches the whole queue every step
        window = 4 * self.max_running
        ready = [
            r
            for r in itertools.islice(self.waiting, window)
            if r.prefetch is None or r.prefetch.done
        ]
        if not ready:
            return
        starving = [r for r in ready if self.steps - self._waited[r.rid] >= self.starvation_steps]
        hits: dict[int, int] = {}
        if self.prefix_caching and not starving:
            hits = {
                r.rid: self.cache.match(r.all_ids[:-1], touch=False).device_tokens for r in ready
            }
            ready.sort(key=lambda r: -hits[r.rid])  # resident prefixes first (stable: FIFO within)
        for req in starving + [r for r in ready if r not in starving]:
            if len(self.running) >= self.max_running:
                break
            if req.rid in hits and self._shares_running_prefill(req, hits[req.rid]):
                continue  # includes requests admitted just now, in this loop
            try:
                self._attach(req)
            except OutOfPages:
                break  # its host hit cannot be loaded while running requests hold the device
            self.waiting.remove(req)
            req.state = State.RUNNING
            self.running.append(req)

    def _shares_running_prefill(self, req: Request, cached: int) -> bool:
        """Whether a running request is prefilling a prefix of `req` longer than what the cache
        holds for it (by `_DEFER_MIN_TOKENS`): then `req` waits, and hits that prefix once it is
        cached (`_cache_prompt`) instead of computing it a second time in parallel."""
        ids = req.prompt_ids
        return any(
            other.is_prefilling
            and other.prompt_ids[: self.page_size] == ids[: self.page_size]
            and _common_prefix(other.prompt_ids, ids) - cached >= _DEFER_MIN_TOKENS
            for other in self.running  # few are prefilling at once: chunked prefill
        )

    def _attach(self, req: Request) -> None:
        """Match the request's prefix, lock it, load its host part; the page table starts there."""
        if not self.prefix_caching:
            return
        tokens = req.all_ids[:-1]  # the last token is always computed: its logits pick the next
        m = self.cache.match(tokens)
        self.cache.lock(m.last_node)
        try:
            self.cache.load(m, overlap=True)  # the next forward waits per layer
        except OutOfPages:
            self.cache.unlock(m.last_node)
            raise
        fetched = min(req.prefetch.fetched_tokens, m.host_tokens) if req.prefetch is not None else 0
        self.cache.release_prefetch(req.prefetch)  # its pages are locked by the request now
        if not req.output_ids:  # account the prompt's cache hit once, at first admission
            req.cached_by_tier = {
                "device": m.device_tokens,
                "host": m.host_tokens - fetched,
                "remote": fetched,
            }
        loaded = self.cache.match(tokens, touch=False)
        req.node = m.last_node
        req.page_table = list(loaded.device_pages)
        req.tree_pages = len(req.page_table)
        req.num_computed = len(req.page_table) * self.page_size

    # ---- planning and pages ------------------------------------------------------------------
    def _plan(self) -> list[tuple[Request, int]]:
        budget = self.max_batch_tokens
        plan: list[tuple[Request, int]] = []
        order = sorted(
            self.running, key=lambda r: len(r.all_ids) - r.num_computed > 1
        )  # decodes first
        for req in order:
            if budget <= 0:
                break
            if req not in self.running:
                continue  # preempted while planning an earlier request
            n = min(len(req.all_ids) - req.num_computed, budget)
            if not self._reserve(req, req.num_computed + n):
                continue
            plan.append((req, n))
            budget -= n
        return [(r, n) for r, n in plan if r in self.running]

    def _reserve(self, req: Request, tokens: int) -> bool:
        """Grow the page table to hold `tokens`, preempting newer requests if the pool is dry."""
        need = -(-tokens // self.page_size) - len(req.page_table)
        while need > 0:
            try:
                req.page_table += self.cache.alloc(need)
                return True
            except OutOfPages:
                victim = next((r for r in reversed(self.running) if r is not req), None)
                if victim is None:
                    self.running.remove(req)
                    self._release(req)
                    if (
                        len(req.all_ids) - 1
                        > (self.cache.device_pool.num_pages - 1) * self.page_size
                    ):
                        self._finish(req, "abort")  # can never fit: larger than the device tier
                    else:
                        self._requeue(req)
                    return False
                self.running.remove(victim)
                self._release(victim)
                self._requeue(victim)
        return True

    def _requeue(self, req: Request) -> None:
        self.preemptions += 1
        req.state = State.WAITING
        self.cache.release_prefetch(req.prefetch)
        req.prefetch = None
        self.waiting.appendleft(req)
        self._waited[req.rid] = self.steps - self.starvation_steps  # resumes first

    def _cache_prompt(self, req: Request) -> None:
        """Hand the prompt's full pages to the tree as soon as its prefill is done (the request
        keeps running on them, locked), so that requests sharing the prompt hit it now rather
        than when this one finishes. Where the tree already held a page, ours was a duplicate:
        the page table switches to the tree's copy (same tokens, same KV)."""
        ps, cache = self.page_size, self.cache
        full = req.num_computed // ps
        if full <= req.tree_pages:
            return
        tokens = req.all_ids[: full * ps]
        node = cache.insert(tokens, req.page_table[:full])
        cache.lock(node)
        if req.node is not None:
            cache.unlock(req.node)
        req.node = node
        req.page_table[:full] = cache.match(tokens, touch=False).device_pages
        req.tree_pages = full

    def _release(self, req: Request) -> None:
        """Hand computed full pages to the tree (or back, caching off), free the rest, unlock."""
        ps, cache = self.page_size, self.cache
        full = req.num_computed // ps
        own = req.page_table[req.tree_pages :]
        if self.prefix_caching and full:
            cache.insert(req.all_ids[: full * ps], req.page_table[:full])
            cache.free(req.page_table[max(full, req.tree_pages) :])
        else:
            cache.free(own)
        if req.node is not None:
            cache.unlock(req.node)
        req.node, req.page_table, req.tree_pages, req.num_computed = None, [], 0, 0
