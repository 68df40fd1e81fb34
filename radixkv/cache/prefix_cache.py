"""The cache as the serving engine sees it: a small typed interface over `HiRadixCache`.

The engine never holds a tree node, the controller or a pool. It gets `PrefixHandle`s (opaque
apart from their lengths by tier and their device pages), locks and unlocks by handle, loads a
handle's host part to the device, allocates and frees request pages, inserts computed pages,
prefetches for queued requests and reports prefill speed for the load-or-recompute estimate.

`NoPrefixCache` is the same interface with prefix reuse turned off (`--no-prefix-caching`): it
matches nothing and keeps nothing, and still owns every device page (a do-nothing cache, not a
flag the scheduler tests everywhere).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from radixkv.cache.hicache import HiRadixCache
from radixkv.cache.prefetch.prefetcher import Expectation
from radixkv.cache.prefetch.remote_reads import Prefetch
from radixkv.cache.tree import TreeNode
from radixkv.cache.types import MatchResult


@dataclass(frozen=True)
class PrefixHandle:
    """A cached prefix: tokens [0, device_tokens) on device in `device_pages`, then host, then
    remote tokens. Lock it while a request runs on its pages; unlock the same handle."""

    device_tokens: int
    host_tokens: int
    remote_tokens: int
    device_pages: tuple[int, ...]
    _node: TreeNode | None = field(default=None, repr=False, compare=False)  # what lock() pins
    _match: MatchResult | None = field(default=None, repr=False, compare=False)
    _tokens: Sequence[int] = field(default=(), repr=False, compare=False)

    @property
    def cached_tokens(self) -> int:
        return self.device_tokens + self.host_tokens + self.remote_tokens

    @property
    def num_pages(self) -> int:
        """Device pages of the prefix, which the cache owns."""
        return len(self.device_pages)


EMPTY = PrefixHandle(0, 0, 0, ())


class PrefixCache:
    """The engine's view of a `HiRadixCache` (which it owns and closes)."""

    reuses_prefixes = True

    @property
    def page_size(self) -> int:
        return self._cache.page_size

    def __init__(self, cache: HiRadixCache) -> None:
        self._cache = cache
        self.device_capacity_pages = cache.device_pool.num_pages
        self.has_remote = cache.store is not None

    # ---- prefixes ------------------------------------------------------------------------------
    def match(self, tokens: Sequence[int], *, touch: bool = True) -> PrefixHandle:
        """The cached prefix of `tokens`; `touch` counts it as a hit for the eviction policy."""
        return self._handle(self._cache.match(tokens, touch=touch), tokens)

    @staticmethod
    def _handle(
        m: MatchResult, tokens: Sequence[int], node: TreeNode | None = None
    ) -> PrefixHandle:
        pages = tuple(m.device_pages)
        node = m.last_node if node is None else node
        return PrefixHandle(m.device_tokens, m.host_tokens, m.remote_tokens, pages, node, m, tokens)

    def lock(self, handle: PrefixHandle) -> None:
        """Keep the prefix's pages on every tier until `unlock(handle)`."""
        if handle._node is not None:
            self._cache.lock(handle._node)

    def unlock(self, handle: PrefixHandle) -> None:
        if handle._node is not None:
            self._cache.unlock(handle._node)

    def load(self, handle: PrefixHandle) -> PrefixHandle:
        """Copy the locked prefix's host part to the device (the next forward waits for it layer
        by layer); returns the handle with its device pages now. Raises OutOfPages when the
        device cannot make room (locked pages fill it)."""
        # the prefetcher may have moved some of its device pages, copies still in flight: joined
        # whether or not a host part is left to load
        self._cache.join_prefetch_loads()
        if handle._match is None or not handle.host_tokens:
            return handle
        self._cache.load(handle._match, overlap=True)
        now = self._cache.match(handle._tokens, touch=False)
        return self._handle(now, handle._tokens, node=handle._node)  # the node locked stays

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> PrefixHandle:
        """Hand request pages for `tokens[: len(pages) * page_size]` to the cache. The returned
        handle's pages are the cache's copies (where it held one already, the request's duplicate
        is freed); `num_pages` of them are the cache's now."""
        node = self._cache.insert(tokens, pages)
        # every page of the prefix is on device now: its pages are those of the path to `node`
        # (read off the nodes, not by walking the tree over the tokens again)
        path = reversed(list(node.path_to_root()))
        own = tuple(p for n in path for p in n.device)
        return PrefixHandle(
            len(own) * self.page_size, 0, 0, own, node, None, tokens[: len(own) * self.page_size]
        )

    # ---- request pages ---------------------------------------------------------------------------
    def alloc(self, num_pages: int) -> list[int]:
        """Device pages for a request (evicting as needed); raises OutOfPages."""
        return self._cache.alloc(num_pages)

    def free(self, pages: Sequence[int]) -> None:
        """Give back request pages that were not inserted."""
        self._cache.free(pages)

    def committed_device_tokens(self, handle: PrefixHandle) -> int:
        """Of the prefix's device tokens, those a request or a prefetch hold locks now: their
        pages are in `device_pages_committed` already. Locks are path-counted, so the locked
        part of a path is a prefix of it: the deepest locked node on it bounds them."""
        node = handle._node
        for n in node.path_to_root() if node is not None else ():
            if n.lock_ref > 0:
                return min(handle.device_tokens, n.depth)
        return 0

    def device_pages_committed(self) -> int:
        """Device pages eviction cannot free now: requests' own and the tree pages they lock."""
        return len(self._cache.request_pages) + self._cache.locked_device_pages

    # ---- remote tier -----------------------------------------------------------------------------
    def prefetch(self, tokens: Sequence[int]) -> Prefetch | None:
        """Bring a queued request's remote prefix to host, held there until `release_prefetch`;
        None when there is no remote tier. The ticket's `wait_until` says how long the request
        should wait for it: as long as recomputing its tokens not on device or host would take
        (at the measured prefill speed, divided by `remote_load_margin` as loads are; the remote
        timeout until a speed is measured or with a margin of 0, which always loads), so that a
        remote tier slowed by a burst of writes delays nobody more than a cache miss would."""
        if not self.has_remote:
            return None
        ticket = self._cache.prefetch(tokens, hold=True)
        if not ticket.done:
            ticket.wait_until = time.monotonic() + self._cache.remote_wait_s(ticket.uncached_tokens)
        return ticket

    def release_prefetch(self, ticket: Prefetch | None) -> None:
        self._cache.release_prefetch(ticket)

    # ---- prediction (`radixkv.cache.prefetch.prefetcher`) ----------------------------------------
    def expect(self, tokens: Sequence[int]) -> Expectation | None:
        """A request for `tokens` is queued: `prefetch_step` loads its host-resident prefix onto
        the device before its turn (head of the queue first) and holds it (locked) until
        `release_expectation`. None without a host tier (nothing could come up)."""
        if not self._cache.config.has_host_tier:
            return None
        return self._cache.prefetcher.expect(tokens)

    def release_expectation(self, e: Expectation | None) -> int:
        """Drop a queued request's hold (it started, left, or admission needs the room);
        returns the device pages it held, evictable from now on."""
        if e is None or e.released:
            return 0
        held = e.device_pages
        self._cache.prefetcher.release(e)
        return held

    def prefetch_expected(self, e: Expectation | None, pages: int) -> int:
        """Promote one queued request's host prefix to the device (held), at most `pages`
        pages: the head of the queue while admission waits for memory. Returns pages moved."""
        if e is None:
            return 0
        return self._cache.prefetcher.promote(e, pages)

    def yield_session_holds(self) -> int:
        """Drop the holds on returning sessions' contexts (running requests need the room);
        returns the device pages they held, evictable from now on."""
        return self._cache.prefetcher.yield_session_holds()

    def session_began(self, session: str) -> None:
        """A request continuing `session` arrived (its return is learned)."""
        self._cache.prefetcher.turn_began(session, time.monotonic())

    def session_ended(self, session: str, tokens: Sequence[int]) -> None:
        """`session`'s turn finished with `tokens` as its context (prompt and output)."""
        self._cache.prefetcher.turn_ended(session, tokens, time.monotonic())

    def prefetch_step(self, pages: int) -> int:
        """Between steps: promote returning sessions' pages, at most `pages` host -> device and
        as many remote -> host; returns the pages promoted to the device."""
        host = pages if self.has_remote else 0
        moved, _ = self._cache.prefetcher.step(
            time.monotonic(), device_pages=pages, host_pages=host
        )
        return moved

    def poll(self) -> None:
        """Apply finished remote operations (never blocks)."""
        self._cache.poll()

    @property
    def io_pending(self) -> bool:
        return self._cache.io_pending

    def wait_for_io(self, timeout_s: float) -> None:
        """Block until a remote operation finishes (applying it) or `wake()` is called, at most
        `timeout_s`: how a step loop waits when only remote I/O is pending."""
        if self.io_pending:
            self._cache.wait_one(timeout_s)

    def wake(self) -> None:
        """Return a `wait_for_io` early (from any thread): new work has arrived."""
        self._cache.wake()

    # ---- measurements and checks -----------------------------------------------------------------
    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """A prefill step's speed, for the load-or-recompute estimate."""
        self._cache.observe_prefill(tokens, seconds)

    def take_layer_events(self) -> list | None:
        """Per-layer CUDA events of loads the next forward must wait for (once)."""
        return self._cache.take_layer_events()

    def check_integrity(self) -> dict:
        return self._cache.check_integrity()


class NoPrefixCache(PrefixCache):
    """Prefix reuse off: nothing matches, nothing is kept; pages still come from the cache."""

    reuses_prefixes = False

    def __init__(self, cache: HiRadixCache) -> None:
        super().__init__(cache)
        self.has_remote = False

    def match(self, tokens: Sequence[int], *, touch: bool = True) -> PrefixHandle:
        return EMPTY

    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> PrefixHandle:
        return EMPTY  # the request keeps its pages and frees them when it ends

    def prefetch(self, tokens: Sequence[int]) -> Prefetch | None:
        return None

    def expect(self, tokens: Sequence[int]) -> Expectation | None:
        return None

    def session_began(self, session: str) -> None:
        pass  # nothing is kept, so nothing is predicted

    def session_ended(self, session: str, tokens: Sequence[int]) -> None:
        pass

    def prefetch_step(self, pages: int) -> int:
        return 0

    def prefetch_expected(self, e: Expectation | None, pages: int) -> int:
        return 0

    def yield_session_holds(self) -> int:
        return 0
