"""Planning and pages: which tokens each running request computes this step, and the device pages
they need.

Every running request has pending tokens (all_ids[num_computed:]); those with one (decodes) go
first, prefills get chunks of the rest under `max_batch_tokens`; before its next chunk a
prefilling request adopts whatever the cache now holds past what it computed. When the pool runs
dry, the queue's prefetch holds go first, then the newest request is preempted: its computed
pages go into the tree (nothing recomputed if it comes back soon) and it rejoins the queue front.

A request's page table is tree pages it matched (locked) followed by pages it allocated;
`cache.insert` takes the full ones over, `cache.free` takes back a partial last page. The cache
is the only owner that frees pages.
"""

from __future__ import annotations

from engine.admission import Admission
from engine.request import Request, State
from radixkv.cache.prefix_cache import EMPTY
from storage import OutOfPages


class PageTables(Admission):
    """The scheduler's planning and page tables (a part of `engine.scheduler.Scheduler`)."""

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
