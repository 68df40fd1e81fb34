"""Ahead-of-need promotion: moving prefixes up a tier before the request that reads them runs.

`Prefetcher` is a collaborator owned by `HiRadixCache` (`cache.prefetcher`). It predicts from what
the tree and its caller tell it and moves pages only through the cache's own operations (lock,
load, remote reads), within the page budgets its caller gives each `step`, so a prefetch never
takes link time that a waiting request needs (the caller sizes the budget to the link's idle
time before the next request needs it):

- queued requests (`expect` / `release`): a request waiting for the GPU has the host-resident
  part of its cached prefix loaded onto the device before its turn, the head of the queue first,
  and held there (locked) until the request starts. Requests that share a segment share its one
  copy: the second finds it on device.
- returning sessions (`turn_ended` / `turn_began`): after a turn, a session's context is promoted
  when its predicted return nears: `lead_s` before the `lead_quantile` of the learned gaps
  between a session's turns (time for the copy to land however regular the gaps), and only for
  sessions whose class (turns so far) has come back at least `confidence` of the time. Remote
  parts come to host; host parts go to the device, held until the session returns or its
  window (twice the `expire_quantile` of the gaps) closes.

Device pages held by prefetches are capped at `device_share` of the device tier. A third kind,
`hot`, marks what `radixkv.cache.prefetch.hot_prefixes` warms from the shared tier at start-up.

Accounting (`stats`): a page moved is marked on its node with the tier and the kind of
prediction; a later read of the node counts it useful, leaving that tier first counts it wasted.
precision = useful / moved; coverage = useful tokens / hit tokens.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import OrderedDict, deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from radixkv.cache.config import PrefetchConfig
from radixkv.cache.promotion import load_host_part
from radixkv.cache.tiers import DEVICE, HOST
from storage import OutOfPages

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner
    from radixkv.cache.tree import TreeNode

QUEUED, SESSION, HOT = 0, 1, 2
# hot: warmed from the shared tier (radixkv.cache.prefetch.hot_prefixes)
KINDS = ("queued", "session", "hot")
TURN_CLASSES = 5  # sessions are told apart by turns so far: 1, 2, 3, 4, 5 or more
_TIER_BITS = 0b1111  # prefetch_mark: bit (1 << tier) per tier filled; kind + 1 from bit 4 up


@dataclass
class Expectation:
    """Pages promoted for one coming read of `tokens`, held (locked) until `release`."""

    tokens: tuple[int, ...]
    kind: int = QUEUED
    locked: TreeNode | None = None
    device_pages: int = 0  # pages this expectation loaded onto the device
    released: bool = False
    settled: bool = False  # its whole cached prefix is on device (or nothing is cached)


@dataclass
class _Session:
    key: Hashable
    tokens: tuple[int, ...]
    ended_at: float
    turns: int
    promoted: Expectation | None = None


@dataclass
class PrefetchStats:
    moved_pages: list[int] = field(default_factory=lambda: [0] * len(KINDS))
    useful_pages: list[int] = field(default_factory=lambda: [0] * len(KINDS))
    wasted_pages: list[int] = field(default_factory=lambda: [0] * len(KINDS))


class Prefetcher:
    def __init__(self, cache: PageOwner, config: PrefetchConfig) -> None:
        self.cache = cache
        self.config = config
        self.stats = PrefetchStats()
        self.held_device_pages = 0
        self._queue: deque[Expectation] = deque()
        self._sessions: dict[Hashable, _Session] = {}  # between a turn's end and its return
        self._turns: OrderedDict[Hashable, int] = OrderedDict()  # turns so far, bounded
        self._events: list[tuple[float, int, bool, Hashable, _Session]] = []  # (t, seq, expire?)
        self._seq = itertools.count()
        self._due: deque[_Session] = deque()  # sessions whose return is near, to promote
        self._unscheduled: list[_Session] = []  # ended before any gap was learned
        self._gaps: deque[float] = deque(maxlen=config.history)
        self._sorted_gaps: list[float] = []
        self._returned = [0] * TURN_CLASSES
        self._resolved = [0] * TURN_CLASSES
        self._away = [0.0] * TURN_CLASSES  # sessions away, weighted (see `return_rate`)
        self._weights_at: float | None = None
        self.session_device_pages = 0  # of held_device_pages, those held for sessions

    # ---- hints from the caller ---------------------------------------------------------------
    def expect(self, tokens: Sequence[int]) -> Expectation:
        """A request for `tokens` is queued: promote its prefix before its turn (`step`)."""
        e = Expectation(tuple(tokens[: self.cache.tree.aligned(len(tokens))]))
        self._queue.append(e)
        return e

    def release(self, e: Expectation | None) -> None:
        """Its request started, or left: drop the hold (idempotent)."""
        if e is None or e.released:
            return
        e.released = True
        self.cache.controller.join_deferred()  # its pages may be evicted and reused from now on
        if e.locked is not None:
            self.cache.unlock(e.locked)
            e.locked = None
        self.held_device_pages -= e.device_pages
        if e.kind == SESSION:
            self.session_device_pages -= e.device_pages
        e.device_pages = 0

    def promote(self, e: Expectation, device_pages: int) -> int:
        """Load one queued request's host prefix to the device now, held, within `device_pages`
        and the share cap (what `step` does for the whole queue). Returns the pages moved."""
        if e.released or e.settled:
            return 0
        return self._to_device(e, device_pages)

    def yield_session_holds(self) -> int:
        """Drop every returning session's device hold (running requests need the room; the
        caller stops new holds until one leaves). Sessions stay due: a later `step` promotes
        them again. Returns the device pages the holds had, evictable from now on."""
        freed = 0
        for s in self._due:  # every promoted session is due (few)
            if s.promoted is not None:
                freed += s.promoted.device_pages
                self.release(s.promoted)
                s.promoted = None  # a released hold is never locked again: a new one next time
        return freed

    def turn_began(self, session: Hashable, now: float) -> None:
        """A session's next request arrived: its gap is learned and its hold released."""
        s = self._sessions.pop(session, None)
        if s is None:
            return
        c = min(s.turns, TURN_CLASSES) - 1
        self._returned[c] += 1
        self._resolved[c] += 1
        self._learn_gap(now - s.ended_at)
        self.release(s.promoted)
        if self._unscheduled and len(self._gaps) >= self.config.min_history:
            for waiting in self._unscheduled:  # now their returns can be predicted too
                if self._sessions.get(waiting.key) is waiting:
                    self._schedule_promotion(waiting)
            self._unscheduled.clear()

    def turn_ended(self, session: Hashable, tokens: Sequence[int], now: float) -> None:
        """A session's turn finished; `tokens` is the context its next turn will resend."""
        turns = self._turns.pop(session, 0) + 1
        self._turns[session] = turns
        if len(self._turns) > self.config.max_sessions:
            self._turns.popitem(last=False)
        old = self._sessions.pop(session, None)
        if old is not None:  # ended twice without a new turn between: the newer context wins
            self.release(old.promoted)
        s = _Session(session, tuple(tokens[: self.cache.tree.aligned(len(tokens))]), now, turns)
        self._sessions[session] = s
        if len(self._sessions) > self.config.max_sessions:  # ids are the client's: bounded
            oldest = self._sessions.pop(next(iter(self._sessions)))
            self.release(oldest.promoted)
        learned = len(self._gaps) >= self.config.min_history
        if learned:
            self._schedule_promotion(s)
        else:
            self._unscheduled.append(s)
            if len(self._unscheduled) > self.config.max_sessions:
                del self._unscheduled[0]
        # a session not back by twice the expire quantile of the gaps is taken for gone
        expire = 2 * self._quantile(self.config.expire_quantile) if learned else None
        ttl = self.config.session_ttl_s if expire is None else expire
        heapq.heappush(self._events, (now + ttl, next(self._seq), True, session, s))

    def _schedule_promotion(self, s: _Session) -> None:
        lead = self._quantile(self.config.lead_quantile) - self.config.lead_s
        at = s.ended_at + max(0.0, lead)
        heapq.heappush(self._events, (at, next(self._seq), False, s.key, s))

    # ---- moving pages --------------------------------------------------------------------------
    def step(self, now: float, *, device_pages: int, host_pages: int = 0) -> tuple[int, int]:
        """Promote within budgets: at most `device_pages` host->device and `host_pages`
        remote->host. Returns the pages moved to each (remote reads complete in `poll()`)."""
        self._advance(now)
        dev_left, host_left = device_pages, host_pages
        while self._queue and self._queue[0].released:
            self._queue.popleft()
        cap = int(self.config.device_share * self.cache.config.device_pages)
        for e in self._queue:  # head first: it runs soonest
            if dev_left <= 0 or self.held_device_pages >= cap:
                break
            dev_left -= self.promote(e, dev_left)
        live: deque[_Session] = deque()
        for s in self._due:  # sessions whose return is near (few): kept until back or expired
            if self._sessions.get(s.key) is not s:
                continue  # returned or expired meanwhile
            live.append(s)
            if dev_left <= 0 and host_left <= 0:
                continue
            host_left -= self._to_host(s.tokens, host_left)
            if s.promoted is None:
                s.promoted = Expectation(s.tokens, kind=SESSION)
            dev_left -= self._to_device(s.promoted, dev_left)
        self._due = live
        return device_pages - dev_left, host_pages - host_left

    def _advance(self, now: float) -> None:
        while self._events and self._events[0][0] <= now:
            _, _, expire, session, s = heapq.heappop(self._events)
            if self._sessions.get(session) is not s:
                continue  # it returned, or ended again, meanwhile
            if expire:
                del self._sessions[session]
                self._resolved[min(s.turns, TURN_CLASSES) - 1] += 1
                self.release(s.promoted)
            elif self.confident(s.turns, now):
                self._due.append(s)

    def return_rate(self, turns: int, now: float | None = None) -> float:
        """An estimate of how often a session with `turns` turns so far comes back.

        A return resolves within a gap but a no-show only at its window's end, so counting
        resolved sessions alone overrates the rate early on. Each session still away counts as
        a no-show weighted by the share of learned gaps shorter than its absence (a returning
        one would most likely be back by now). A class with fewer than `min_history` resolved
        sessions borrows the estimate over all classes. Laplace-smoothed (nothing seen: 1/2).
        The weights come from one pass over the sessions away, redone at most once a second.
        """
        if now is not None and (self._weights_at is None or now - self._weights_at >= 1.0):
            self._refresh_absences(now)
        c = min(turns, TURN_CLASSES) - 1
        if self._resolved[c] >= self.config.min_history:
            returned, resolved, away = self._returned[c], self._resolved[c], self._away[c]
        else:
            returned, resolved, away = sum(self._returned), sum(self._resolved), sum(self._away)
        return (returned + 1) / (resolved + away + 2)

    def _refresh_absences(self, now: float) -> None:
        self._weights_at = now
        self._away = [0.0] * TURN_CLASSES
        n = len(self._sorted_gaps)
        if not n:
            return
        for s in self._sessions.values():
            share = bisect.bisect_right(self._sorted_gaps, now - s.ended_at) / n
            self._away[min(s.turns, TURN_CLASSES) - 1] += share

    def confident(self, turns: int, now: float | None = None) -> bool:
        """Has this class of session (turns so far) come back often enough to prefetch?"""
        return self.return_rate(turns, now) >= self.config.confidence

    def _to_device(self, e: Expectation, budget: int) -> int:
        """Load up to `budget` pages of `e`'s host-resident prefix onto the device, held."""
        cache = self.cache
        share = self.config.device_share * cache.config.device_pages
        cap = int(share) - self.held_device_pages
        if e.kind == SESSION:  # sessions wait longer than queued requests: half the share at most
            cap = min(cap, int(share / 2) - self.session_device_pages)
        room = min(budget, cap)
        if room <= 0:
            return 0
        m = cache.match(e.tokens, touch=False)
        if m.host_tokens == 0:
            # a queued request with nothing on host or remote has nothing more to come up
            e.settled = e.kind == QUEUED and m.remote_tokens == 0
            return 0
        if e.locked is not m.last_node:  # first hold, or the cached prefix grew meanwhile
            cache.lock(m.last_node)
            if e.locked is not None:
                cache.unlock(e.locked)
            e.locked = m.last_node
        loaded: list[TreeNode] = []
        try:
            load_host_part(cache, m, defer=True, max_pages=room, loaded=loaded)
        except OutOfPages:
            return 0  # the device is all locked by running requests: try next step
        pages = 0
        for n in loaded:
            self.mark(n, DEVICE, e.kind)
            pages += len(n.device)
        e.device_pages += pages
        self.held_device_pages += pages
        if e.kind == SESSION:
            self.session_device_pages += pages
        self.stats.moved_pages[e.kind] += pages
        return pages

    def _to_host(self, tokens: tuple[int, ...], budget: int) -> int:
        """Start reading `tokens`' remote part into host if it fits `budget` pages."""
        if budget <= 0 or self.cache.store is None:
            return 0
        m = self.cache.match(tokens, touch=False)
        need = m.remote_tokens // self.cache.page_size
        if need == 0 or need > budget:
            return 0
        self.cache.reads.prefetch(tokens, discover=False, mark_kind=SESSION)
        return need

    # ---- accounting --------------------------------------------------------------------------
    def mark(self, node: TreeNode, tier: int, kind: int) -> None:
        """`node`'s pages on `tier` were moved there by a prediction of `kind`."""
        pages = len(node.key) // self.cache.page_size
        if tier == HOST:
            self.stats.moved_pages[kind] += pages  # device moves are counted by their caller
        node.prefetch_mark = (node.prefetch_mark & _TIER_BITS) | (1 << tier) | ((kind + 1) << 4)

    def on_read(self, node: TreeNode) -> None:
        """A request's match covered `node`: whatever was prefetched into it proved useful."""
        mark = node.prefetch_mark
        if mark:
            pages = len(node.key) // self.cache.page_size
            self.stats.useful_pages[(mark >> 4) - 1] += pages * bin(mark & _TIER_BITS).count("1")
            node.prefetch_mark = 0

    def on_leave(self, node: TreeNode, tier: int) -> None:
        """`node`'s copy on `tier` is going: unread, its prefetch was wasted."""
        mark = node.prefetch_mark
        if mark & (1 << tier):
            self.stats.wasted_pages[(mark >> 4) - 1] += len(node.key) // self.cache.page_size
            mark &= ~(1 << tier)
            node.prefetch_mark = mark if mark & _TIER_BITS else 0

    def report(self, hit_tokens: int) -> dict:
        """Moved, useful and wasted pages by kind; precision, coverage of `hit_tokens`."""
        s, ps = self.stats, self.cache.page_size
        moved, useful, wasted = sum(s.moved_pages), sum(s.useful_pages), sum(s.wasted_pages)
        by_kind = {
            k: {
                "moved_pages": s.moved_pages[i],
                "useful_pages": s.useful_pages[i],
                "wasted_pages": s.wasted_pages[i],
                "precision": s.useful_pages[i] / s.moved_pages[i] if s.moved_pages[i] else None,
            }
            for i, k in enumerate(KINDS)
        }
        return {
            "moved_pages": moved,
            "useful_pages": useful,
            "wasted_pages": wasted,
            "wasted_bytes": wasted * self.cache.layout.page_bytes,
            "pending_pages": moved - useful - wasted,
            "precision": useful / moved if moved else None,
            "coverage": useful * ps / hit_tokens if hit_tokens else None,
            "held_device_pages": self.held_device_pages,
            "queued": sum(not e.released for e in self._queue),
            "sessions_waiting": len(self._sessions),
            "session_return_rate_by_turns": [self.return_rate(t + 1) for t in range(TURN_CLASSES)],
            "by_kind": by_kind,
        }

    # ---- the learned gaps ----------------------------------------------------------------------
    def _learn_gap(self, gap: float) -> None:
        if len(self._gaps) == self._gaps.maxlen:
            old = self._gaps[0]
            del self._sorted_gaps[bisect.bisect_left(self._sorted_gaps, old)]
        self._gaps.append(gap)
        bisect.insort(self._sorted_gaps, gap)

    def _quantile(self, q: float) -> float:
        xs = self._sorted_gaps
        return xs[min(len(xs) - 1, int(q * len(xs)))]
