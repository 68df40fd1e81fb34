"""The continuous-batching scheduler on the HiRadixTree: it decides, the model runner executes.

`schedule()` (steps 1-4) returns the next batch; `process_outputs()` (step 5) applies the
runner's tokens. The scheduler talks to the cache only through `radixkv.cache.prefix_cache`.
  1. apply finished remote reads (`cache.poll()`);
  2. admit waiting requests, cache-aware: a request whose remote prefetch is still in flight waits
     without blocking the others; among ready ones, the longest cached prefix goes first unless
     someone has waited `starvation_steps` steps; one whose prompt shares a long prefix with a
     request still prefilling waits for that prefix to be cached. Admission matches the prefix,
     locks it, loads its host part to the device and takes its device pages as the start of the
     page table;
  3. schedule tokens under `max_batch_tokens`: every running request has pending tokens
     (all_ids[num_computed:]); those with one (decodes) go first, prefills get chunks of the rest;
     before its next chunk a prefilling request adopts whatever the cache now holds past what it
     computed (its remote fetch, landed after it was admitted; a prefix cached meanwhile);
  4. allocate device pages; when the pool runs dry, the queue's prefetch holds go first, then
     the newest request is preempted: its computed pages go into the tree (nothing recomputed if
     it comes back soon), it rejoins the queue front; then the prefetcher promotes, within
     `prefetch_pages`, waiting requests' host prefixes (held until their turn) and returning
     sessions' contexts;
  5. (the runner: one forward; a token where a request's pending tokens are all computed) a
     prefill chunk hands its computed full pages to the tree at once (still locked by the request);
     stop on EOS, stop tokens, stop strings or max_tokens, and hand finished pages to the tree.

Pages: a request's page table is tree pages it matched (locked) followed by pages it allocated;
`cache.insert` takes the full ones over, `cache.free` takes back a partial last page. The cache is
the only owner that frees pages.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from engine.forward_batch import ForwardBatch, to_device
from engine.request import Request, State
from engine.sampling import SAMPLE_FAILED, RowSampling
from radixkv.cache.prefix_cache import EMPTY, PrefixCache, PrefixHandle
from storage import OutOfPages

_PREFILL_SAMPLE_MIN_TOKENS = 64  # steps with fewer prefill tokens say little about its speed
_DEFER_MIN_TOKENS = 64  # a shared, still-uncached prefix worth waiting for (see _admit)
_RESERVE_CLIP_TOKENS = 4096  # admission reserves for at most this many more output tokens
_RATIO_INIT, _RATIO_MIN, _RATIO_ALPHA = 0.7, 0.1, 0.1  # the new-token ratio's start, floor, EMA


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


@dataclass
class ScheduledBatch:
    """What one step runs: (request, tokens to compute) per sequence, and its forward batch."""

    plan: list[tuple[Request, int]]
    forward: ForwardBatch


class Scheduler:
    def __init__(
        self,
        cache: PrefixCache,
        device: torch.device,
        *,
        max_batch_tokens: int = 2048,
        max_running: int = 64,
        eos_token_ids: tuple[int, ...] = (),
        detokenize: Callable[[list[int]], str] | None = None,
        starvation_steps: int = 32,
        check_integrity: bool = False,
        prefetch_pages: int = 0,
    ) -> None:
        if max_batch_tokens < 1 or max_running < 1:
            raise ValueError("max_batch_tokens and max_running must be >= 1")
        self.cache, self.device = cache, device
        self.page_size = cache.page_size
        self.max_batch_tokens, self.max_running = max_batch_tokens, max_running
        self.eos_token_ids = set(eos_token_ids)
        self.detokenize = detokenize
        self.starvation_steps = starvation_steps
        self.check_integrity = check_integrity
        self.prefetch_pages = prefetch_pages  # the prefetcher's budget between two steps (0: off)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.steps = 0
        self._waited: dict[int, int] = {}
        self.preemptions = 0
        self.admission_waits = 0  # steps admission stopped for memory with a request waiting
        self.continued_steps = 0  # decode steps queued before the last one's tokens were read
        self.adopted_tokens = 0  # prompt tokens loaded between chunks instead of computed
        # the last admission stopped for memory: until a request leaves (`_release`), waiting
        # requests cannot be admitted, so a decode step may be continued without admitting
        self._admission_blocked = False
        self._blocked_head: Request | None = None  # the request admission waits for memory for
        self._holds_yielded = False  # the queue's prefetch holds yielded to admission (below)
        # the share of max_tokens requests actually produce (EMA over finished requests): how
        # much decode room admission reserves per request; a preemption raises it
        self.new_token_ratio = _RATIO_INIT
        # called with every request that finishes, whatever the reason (a server's output hook)
        self.on_finish: Callable[[Request], None] | None = None

    # ---- requests ----------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        # remote -> host while it waits; held there until it attaches or finishes
        req.prefetch = self.cache.prefetch(req.prompt_ids[:-1])
        if self.prefetch_pages:  # host -> device while it waits (between steps, budgeted)
            req.expectation = self.cache.expect(req.prompt_ids[:-1])
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

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def _window(self) -> Iterator[Request]:
        """The head of the queue admission looks at: a bounded FIFO window, so that admission
        never re-matches the whole queue every step."""
        return itertools.islice(self.waiting, 4 * self.max_running)

    def next_prefetch_deadline(self) -> float | None:
        """(time.monotonic) when the first waiting request stops waiting for its remote fetch."""
        times = [
            r.prefetch.wait_until for r in self._window() if r.prefetch and not r.prefetch.done
        ]
        return min(times, default=None)

    # ---- one step ----------------------------------------------------------------------------
    def prefetch(self) -> int:
        """Run the prefetcher within its budget: after each step's admission and, with nothing
        to run, while the engine idles (returning sessions come due while every client thinks).
        Its copies go on the side stream, which no step waits for. (While admission waits for
        memory, promoting for the queue would only be undone.) Returns pages put on the device."""
        if not self.prefetch_pages or self._holds_yielded:
            return 0
        if self._admission_blocked:
            # the head alone: its hold is part of its own admission (locked, so admission
            # charges it no more), not room taken from it; running requests' growth still
            # takes it back first
            head = self._blocked_head
            if head is None or head.expectation is None:
                return 0
            return self.cache.prefetch_expected(head.expectation, self.prefetch_pages)
        return self.cache.prefetch_step(self.prefetch_pages)

    def schedule(self) -> ScheduledBatch | None:
        """Admit, plan and reserve pages for the next batch; None when nothing can run."""
        self.steps += 1
        self.cache.poll()
        self._admit()
        plan = self._plan()
        self.prefetch()  # after admission and this step's pages: for requests still waiting
        if not plan:
            return None
        sequences, sampling = [], []
        for r, n in plan:
            sequences.append(
                (r.tokens(r.num_computed, r.num_computed + n), r.num_computed, r.page_table)
            )
            samples = r.num_computed + n == r.num_tokens  # else a prefill chunk: more to come
            sampling.append(self._row_sampling(r) if samples else None)
        forward = ForwardBatch.build(sequences, self.page_size, self.device, sampling)
        forward.layer_ready = self.cache.take_layer_events()
        return ScheduledBatch(plan, forward)

    def continue_decode(self, prev: ScheduledBatch, ids: torch.Tensor) -> ScheduledBatch | None:
        """The decode step after `prev`, planned while `prev` still runs: each of its requests
        computes the token `prev` samples for it, which `ids` (on the device) holds and the host
        has not read yet. None where the next step must be scheduled normally: `prev` is not a
        decode step of every running request, someone could be admitted, a row samples other
        than plainly greedy or is about to reach max_tokens, or a page would need a preemption.

        A request that `prev` ends (EOS, a stop) still computes one token in this step; its
        pages go back when `prev`'s outputs are applied, and this step's row for it is dropped
        (`process_outputs` skips requests no longer running). The GPU runs the steps in order,
        so nothing reuses those pages before this step has written them."""
        if self.waiting and not self._admission_blocked and len(self.running) < self.max_running:
            return None
        if len(prev.plan) != len(self.running) or not prev.forward.sampling:
            return None
        for (r, n), row in zip(prev.plan, prev.forward.sampling, strict=True):
            if (
                n != 1
                or row is None
                or r.state != State.RUNNING
                or not r.output_ids  # prev samples its first token: its prompt is cached then
                or len(r.output_ids) + 2 > r.params.max_tokens  # prev's token is its last
            ):
                return None
        for r, _ in prev.plan:  # room for the token prev samples, at position num_computed + 1
            need = -(-(r.num_computed + 2) // self.page_size) - len(r.page_table)
            if need > 0:
                try:
                    r.page_table += self.cache.alloc(need)
                except OutOfPages:
                    return None  # the pages taken so far stay in their tables, used next step
        self.steps += 1
        self.continued_steps += 1
        plan = [(r, 1) for r, _ in prev.plan]
        sampling = [self._row_sampling(r) for r, _ in plan]
        prefix = [r.num_computed + 1 for r, _ in plan]
        forward = ForwardBatch(
            input_ids=ids,
            positions=to_device(np.asarray(prefix, dtype=np.int64), ids.device),
            prefix_lens=prefix,
            extend_lens=[1] * len(plan),
            page_tables=[r.page_table for r, _ in plan],
            page_size=self.page_size,
            sampling=sampling,
        )
        return ScheduledBatch(plan, forward)

    def _row_sampling(self, r: Request) -> RowSampling:
        p = r.params
        banned = ()
        if len(r.output_ids) < p.min_tokens:  # too early to end: EOS and stop tokens banned
            banned = tuple(self.eos_token_ids | set(p.stop_token_ids))
        return RowSampling(p, r.generator, r.constraint, r.output_ids, banned)

    def process_outputs(
        self, batch: ScheduledBatch, tokens: list[int | None], seconds: float
    ) -> list[Request]:
        """Apply a step's tokens; returns the requests that produced a token (or finished).
        `seconds`: the forward's time, for the cache's prefill-speed estimate."""
        progressed = []
        rows = batch.forward.sampling or [None] * len(tokens)
        for (req, n), token, row in zip(batch.plan, tokens, rows, strict=True):
            if req.state != State.RUNNING:
                continue  # ended (or aborted) by the step before: a continued step's extra row
            req.num_computed += n
            if token is None:  # a prefill chunk: more to compute before sampling
                self._cache_prompt(req)  # its full pages: shareable, and adoption continues past
                continue
            if token == SAMPLE_FAILED:  # its sampling raised (logged): it ends alone
                self.running.remove(req)
                self._release(req)
                self._finish(req, "error")
                progressed.append(req)
                continue
            if len(req.output_ids) == 0:
                self._cache_prompt(req)  # requests queued behind it can reuse it right away
                self.cache.release_prefetch(req.prefetch)  # its prompt needs no more pages
            req.output_ids.append(token)
            if row is not None and row.logprob is not None:
                req.output_logprobs.append(row.logprob)
            if req.constraint is not None:
                req.constraint.advance(token)
            if req.first_token_at is None:
                req.first_token_at = time.perf_counter()
            progressed.append(req)
            reason = self._stop_reason(req, token)
            if reason:
                self.running.remove(req)
                self._release(req)
                self._finish(req, reason)
        prefill = sum(n for _, n in batch.plan if n > 1)
        if prefill >= _PREFILL_SAMPLE_MIN_TOKENS:  # the runner synced: the time is the forward's
            self.cache.observe_prefill(prefill, seconds)
        if self.check_integrity:
            self.cache.check_integrity()
        return progressed

    def _stop_reason(self, req: Request, token: int) -> str | None:
        p = req.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if req.constraint is not None and req.constraint.finished:
            return "stop"  # the grammar is complete (its EOS, if sampled, was handled above)
        if p.stop and self.detokenize is not None and len(req.output_ids) >= p.min_tokens:
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
        if reason in ("stop", "length"):
            used = min(1.0, len(req.output_ids) / min(req.params.max_tokens, _RESERVE_CLIP_TOKENS))
            ratio = (1 - _RATIO_ALPHA) * self.new_token_ratio + _RATIO_ALPHA * used
            self.new_token_ratio = min(1.0, max(_RATIO_MIN, ratio))
            if req.session is not None and self.prefetch_pages:
                self.cache.session_ended(req.session, req.all_ids)  # its next turn resends these
        req.state, req.finish_reason = State.FINISHED, reason
        self._waited.pop(req.rid, None)
        self.cache.release_prefetch(req.prefetch)
        self._drop_expectation(req)
        if self.detokenize is not None and not req.text:
            req.text = self.detokenize(req.output_ids)
        if self.on_finish is not None:
            self.on_finish(req)

    # ---- admission ---------------------------------------------------------------------------
    def _admit(self) -> None:
        self._admission_blocked, self._blocked_head = False, None
        free_slots = self.max_running - len(self.running)
        if free_slots <= 0:
            return
        now = time.monotonic()
        ready = [  # a remote fetch is waited for only while recomputing would take longer
            r
            for r in self._window()
            if r.prefetch is None or r.prefetch.done or now >= r.prefetch.wait_until
        ]
        if not ready:
            return
        starving = [r for r in ready if self.steps - self._waited[r.rid] >= self.starvation_steps]
        hits: dict[int, PrefixHandle] = {}
        if self.cache.reuses_prefixes and not starving:
            hits = {
                r.rid: self.cache.match(r.tokens(0, r.num_tokens - 1), touch=False) for r in ready
            }
            # resident prefixes first (stable: FIFO within)
            ready.sort(key=lambda r: -hits[r.rid].device_tokens)
        room = self._uncommitted_pages()
        for req in starving + [r for r in ready if r not in starving]:
            if len(self.running) >= self.max_running:
                break
            hit = hits.get(req.rid)
            if hit is not None and self._shares_running_prefill(req, hit.device_tokens):
                continue  # includes requests admitted just now, in this loop
            # read now: requests admitted earlier in this loop may lock part of its prefix
            committed = self.cache.committed_device_tokens(hit) if hit is not None else 0
            need = self._expected_pages(req, committed)
            if need > room and self.running:
                # by memory: it would preempt others later; FIFO, so nobody overtakes it. The
                # queue's prefetch holds yield first; the hits and the room change with them,
                # so admission looks again next step
                self._wait_for_memory(req)
                break
            try:
                self._attach(req)
            except OutOfPages:
                # its host hit cannot be loaded while running requests hold the device
                self._wait_for_memory(req)
                break
            room -= need
            self.waiting.remove(req)
            req.state = State.RUNNING
            self.running.append(req)

    def _wait_for_memory(self, req: Request) -> None:
        """Admission stops at `req` for memory: the other holds yield to it (admission stays
        blocked unless that freed something), and `req` alone may still be promoted."""
        self._admission_blocked = not self._reclaim_holds(keep=req)
        self._blocked_head = req
        self.admission_waits += 1

    def _reclaim_holds(self, keep: Request | None = None) -> int:
        """Drop the device holds the prefetcher keeps for waiting requests other than `keep`
        and for returning sessions (predictions yield to admission and to running requests'
        growth); the pages freed."""
        freed = sum(self._drop_expectation(r) for r in self.waiting if r is not keep)
        if self.prefetch_pages:
            freed += self.cache.yield_session_holds()
        self._holds_yielded |= freed > 0  # no new holds until a request leaves
        return freed

    def _drop_expectation(self, req: Request) -> int:
        """Release `req`'s prefetch hold, if any; the device pages it held."""
        freed = self.cache.release_expectation(req.expectation)
        req.expectation = None
        return freed

    def _expected_pages(self, req: Request, committed_tokens: int) -> int:
        """Device pages `req` will still take from the room admission counts: its context and
        its remaining output as the adaptive ratio predicts, less the first `committed_tokens`
        (a device prefix someone already locks, which `device_pages_committed` counts). A
        device hit nobody locks is charged: attaching locks it, so it leaves the room then."""
        left = min(req.params.max_tokens - len(req.output_ids), _RESERVE_CLIP_TOKENS)
        total = req.num_tokens + math.ceil(left * self.new_token_ratio)
        return max(0, -(-(total - committed_tokens) // self.page_size) - len(req.page_table))

    def _uncommitted_pages(self) -> int:
        """Device pages neither held by running requests (their own and the tree pages they lock)
        nor promised to their expected growth."""
        promised = sum(self._expected_pages(r, 0) for r in self.running)
        return self.cache.device_capacity_pages - self.cache.device_pages_committed() - promised

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
        # the last token is always computed: its logits pick the next
        m = self.cache.match(req.tokens(0, req.num_tokens - 1))
        loaded = self._lock_and_load(m)
        if req.session is not None and self.prefetch_pages and not req.output_ids:
            self.cache.session_began(req.session)  # what was promoted for it is locked by it now
        if not req.output_ids:  # account the prompt's cache hit once, at first admission
            req.cached_by_tier = {"device": 0, "host": 0, "remote": 0}
            req.prefetch_counted = 0
            self._count_hit(req, m.device_tokens, m.host_tokens)
        # a fetch still in flight (admitted rather than wait longer) is kept: what lands while
        # the request prefills is adopted between its chunks (`_adopt_cached`)
        self._release_done_fetch(req)
        self._drop_expectation(req)
        self._take_prefix(req, m, loaded)

    def _lock_and_load(self, m: PrefixHandle) -> PrefixHandle:
        """Lock a matched prefix and load its host part (the next forward waits per layer);
        raises OutOfPages, the prefix unlocked, when the device cannot make room."""
        self.cache.lock(m)
        try:
            return self.cache.load(m)
        except OutOfPages:
            self.cache.unlock(m)
            raise

    def _take_prefix(self, req: Request, m: PrefixHandle, loaded: PrefixHandle) -> None:
        """The locked, loaded prefix `m` is the request's: its pages start the page table and
        count as computed."""
        req.prefix = m
        req.page_table = list(loaded.device_pages)
        req.tree_pages = len(req.page_table)
        req.num_computed = req.tree_pages * self.page_size

    def _count_hit(self, req: Request, device: int, host: int) -> None:
        """Add a prefix hit to the request's cached tokens by tier: of the host tokens, those its
        remote fetch brought (and not counted yet) count as remote."""
        remote = 0
        if req.prefetch is not None:
            remote = min(max(0, req.prefetch.fetched_tokens - req.prefetch_counted), host)
            req.prefetch_counted += remote
        for tier, n in (("device", device), ("host", host - remote), ("remote", remote)):
            req.cached_by_tier[tier] += n

    # ---- planning and pages ------------------------------------------------------------------
    def _plan(self) -> list[tuple[Request, int]]:
        budget = self.max_batch_tokens
        plan: list[tuple[Request, int]] = []
        order = sorted(
            self.running, key=lambda r: r.num_tokens - r.num_computed > 1
        )  # decodes first
        for req in order:
            if budget <= 0:
                break
            if req not in self.running:
                continue  # preempted while planning an earlier request
            if req.num_tokens - req.num_computed > 1 and self.cache.reuses_prefixes:
                self._adopt_cached(req)
            n = min(req.num_tokens - req.num_computed, budget)
            if not self._reserve(req, req.num_computed + n):
                continue
            plan.append((req, n))
            budget -= n
        return [(r, n) for r, n in plan if r in self.running]

    def _adopt_cached(self, req: Request) -> None:
        """Between a prefilling request's chunks, take over what the cache now holds past what
        it computed instead of computing it: its remote fetch that landed after it was admitted
        (the next chunks' pages in flight while the first ones compute), or a prefix another
        request cached meanwhile. Its computed full pages are the tree's (`_cache_prompt` after
        every chunk), so the match runs on through them; an own partial last page is dropped
        when the adopted pages cover it."""
        ps, cache, before = self.page_size, self.cache, req.num_computed
        if before // ps != req.tree_pages:
            return  # its computed full pages are not all the tree's
        tokens = req.tokens(0, req.num_tokens - 1)
        m = cache.match(tokens, touch=False)
        cached = m.device_tokens + m.host_tokens
        if cached < (before // ps + 1) * ps:  # nothing past its own pages
            self._release_done_fetch(req)
            return
        try:
            loaded = self._lock_and_load(m)
        except OutOfPages:
            return
        cache.free(req.page_table[req.tree_pages :])  # a partial page at most: recomputed above
        cache.unlock(req.prefix)
        self._count_hit(req, max(0, m.device_tokens - before), m.host_tokens)
        self._take_prefix(req, m, loaded)
        self.adopted_tokens += req.num_computed - before
        self._release_done_fetch(req)

    def _release_done_fetch(self, req: Request) -> None:
        """A fetch that finished while its request ran: its pages are adopted or not needed."""
        if req.prefetch is not None and req.prefetch.done:
            self.cache.release_prefetch(req.prefetch)

    def _reserve(self, req: Request, tokens: int) -> bool:
        """Grow the page table to hold `tokens`, preempting newer requests if the pool is dry."""
        need = -(-tokens // self.page_size) - len(req.page_table)
        while need > 0:
            try:
                req.page_table += self.cache.alloc(need)
                return True
            except OutOfPages:
                if self._reclaim_holds():
                    continue  # the queue's holds go before any running request
                victim = next((r for r in reversed(self.running) if r is not req), None)
                if victim is None:
                    self.running.remove(req)
                    self._release(req)
                    if req.num_tokens - 1 > (self.cache.device_capacity_pages - 1) * self.page_size:
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
        self.new_token_ratio = min(1.0, self.new_token_ratio + 0.2)  # admission was too hopeful
        req.state = State.WAITING
        self.cache.release_prefetch(req.prefetch)
        req.prefetch = None
        self.waiting.appendleft(req)
        self._waited[req.rid] = self.steps - self.starvation_steps  # resumes first

    def _cache_prompt(self, req: Request) -> None:
        """Hand the prompt's computed full pages to the tree after every prefill chunk (the
        request keeps running on them, locked), so that requests sharing the prompt hit them now
        rather than when this one finishes, and `_adopt_cached` can match on past them. Where
        the tree already held a page, ours was a duplicate: the page table switches to the
        tree's copy (same tokens, same KV)."""
        ps, cache = self.page_size, self.cache
        full = req.num_computed // ps
        if full <= req.tree_pages:
            return
        inserted = cache.insert(req.tokens(0, full * ps), req.page_table[:full])
        cache.lock(inserted)
        cache.unlock(req.prefix)
        req.prefix = inserted
        req.page_table[: inserted.num_pages] = inserted.device_pages
        req.tree_pages = inserted.num_pages

    def _release(self, req: Request) -> None:
        """Hand computed full pages to the tree (or back, caching off), free the rest, unlock."""
        self._admission_blocked = self._holds_yielded = False  # its pages may let one in
        ps, cache = self.page_size, self.cache
        full = req.num_computed // ps
        kept = cache.insert(req.tokens(0, full * ps), req.page_table[:full]) if full else EMPTY
        cache.free(req.page_table[max(kept.num_pages, req.tree_pages) :])
        cache.unlock(req.prefix)
        req.prefix, req.page_table, req.tree_pages, req.num_computed = EMPTY, [], 0, 0
