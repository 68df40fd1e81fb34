"""Admission: which waiting requests join the running batch, and the memory they may take.

Cache-aware: a request whose remote prefetch is still in flight waits without blocking the
others; among ready ones, the longest cached prefix goes first unless someone has waited
`starvation_steps` steps; one whose prompt shares a long prefix with a request still prefilling
waits for that prefix to be cached. A request is admitted only if its context and its expected
output (the adaptive new-token ratio) fit the device room nobody holds or was promised; else the
queue's prefetch holds yield to it, and admission waits (FIFO). Attaching matches the prefix,
locks it, loads its host part and takes its device pages as the start of the page table.
"""

from __future__ import annotations

import math
import time

from engine.request import Request, State
from engine.scheduler_state import DEFER_MIN_TOKENS, RESERVE_CLIP_TOKENS, SchedulerState
from radixkv.cache.prefix_cache import PrefixHandle
from storage import OutOfPages


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix: a binary search over slice comparisons (C loops)."""
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


class Admission(SchedulerState):
    """The scheduler's admission and memory reclaim (a part of `engine.scheduler.Scheduler`)."""

    def _admit(self) -> None:
        self._admission_blocked, self._blocked_head = False, None
        free_slots = self.max_running - len(self.running)
        if free_slots <= 0:
            return
        now = time.monotonic()
        handoffs = self.handoffs
        ready = [  # a remote fetch is waited for only while recomputing would take longer
            r
            for r in self._window()
            if (handoffs is None or handoffs.ready(r, now))  # a decode engine's handoff: over
            and (r.prefetch is None or r.prefetch.done or now >= r.prefetch.wait_until)
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
        left = min(req.params.max_tokens - len(req.output_ids), RESERVE_CLIP_TOKENS)
        total = req.num_tokens + math.ceil(left * self.new_token_ratio)
        return max(0, -(-(total - committed_tokens) // self.page_size) - len(req.page_table))

    def _uncommitted_pages(self) -> int:
        """Device pages neither held by running requests (their own and the tree pages they lock)
        nor promised to their expected growth."""
        promised = sum(self._expected_pages(r, 0) for r in self.running)
        return self.cache.device_capacity_pages - self.cache.device_pages_committed() - promised

    def _shares_running_prefill(self, req: Request, cached: int) -> bool:
        """Whether a running request is prefilling a prefix of `req` longer than what the cache
        holds for it (by `DEFER_MIN_TOKENS`): then `req` waits, and hits that prefix once it is
        cached (`_cache_prompt`) instead of computing it a second time in parallel."""
        ids = req.prompt_ids
        return any(
            other.is_prefilling
            and other.prompt_ids[: self.page_size] == ids[: self.page_size]
            and common_prefix(other.prompt_ids, ids) - cached >= DEFER_MIN_TOKENS
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
            e = req.expectation  # what it promoted while queued was on host when it came
            promoted = e.device_pages * self.page_size if e is not None and not e.released else 0
            self._count_hit(req, m.device_tokens, m.host_tokens, promoted)
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

    def _count_hit(self, req: Request, device: int, host: int, promoted: int = 0) -> None:
        """Add a prefix hit to the request's cached tokens by tier: of the device tokens, those
        promoted for it from host while it queued count as host; of the host tokens, those its
        remote fetch brought (and not counted yet) count as remote."""
        promoted = min(promoted, device)
        device, host = device - promoted, host + promoted
        remote = 0
        if req.prefetch is not None:
            fetched = req.prefetch.fetched_tokens + req.handoff_fetched
            remote = min(max(0, fetched - req.prefetch_counted), host)
            req.prefetch_counted += remote
        for tier, n in (("device", device), ("host", host - remote), ("remote", remote)):
            req.cached_by_tier[tier] += n
