"""Remote reads: discovering and prefetching remote pages into host, and applying completions.

`RemoteReads` is a collaborator owned by `HiRadixCache` (`cache.reads`): the asynchronous half of
the cache. Every method here returns at once; results are applied to the tree by `poll()` in
the owner's thread. It owns the host pages reserved by reads in flight and the count of pages
held for queued requests; the tree, the pools and the references stay the cache's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from radixkv.cache.tiers import HOST
from storage import OutOfPages
from storage.breaker import StoreUnavailable

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner
    from radixkv.cache.tree import TreeNode
    from radixkv.cache.types import MatchResult

log = logging.getLogger(__name__)


@dataclass
class Prefetch:
    """A prefetch in progress. `done` turns True in `poll()`; then `match()` sees the pages on host.

    Asked with `hold`, the pages it fetched stay pinned on host (so that other prefetches cannot
    evict them) until its owner calls `PageOwner.release_prefetch` (a scheduler: when the
    request attaches, finishes or is requeued). Held pages are capped at half the host tier; past
    that a fetch completes unpinned.
    """

    done: bool = False
    discovered_tokens: int = 0  # remote tokens found beyond what the tree knew
    fetched_tokens: int = 0  # tokens brought into host
    missed: bool = False  # a page the tree believed remote was absent or failed verification
    hold: bool = False  # keep the fetched pages pinned until released
    released: bool = False  # the owner gave it up: a fetch finishing later keeps nothing
    held: TreeNode | None = None  # the pinned (io_ref) node, while held
    held_pages: int = 0
    mark_kind: int | None = (
        None  # a prediction's kind (`radixkv.cache.prefetch.prefetcher`): pages get marked
    )
    # (time.monotonic) a queued request stops waiting for this fetch then: by then recomputing
    # what it may bring would have been done (set by `PrefixCache.prefetch`)
    wait_until: float = math.inf
    uncached_tokens: int = 0  # of the tokens asked for, those on neither device nor host then


class RemoteReads:
    def __init__(self, cache: PageOwner) -> None:
        self.cache = cache
        self.reserved_host: set[int] = set()  # host pages reserved by remote reads in flight
        self.held_pages = 0  # host pages pinned for waiting requests (`release_prefetch`)

    def prefetch(
        self,
        tokens: Sequence[int],
        *,
        discover: bool = True,
        hold: bool = False,
        mark_kind: int | None = None,
    ) -> Prefetch:
        """Start bringing the remote part of `tokens`' cached prefix into the host tier.

        With `discover`, the store is also asked (by chained key) for pages beyond what this
        tree knows: pages other processes wrote. With `hold`, the fetched pages stay pinned until
        `release_prefetch(ticket)`, which the caller then must call. Non-blocking; completes in
        `poll()`.
        """
        ticket = Prefetch(hold=hold, mark_kind=mark_kind)
        if self.cache.store is None or not self.cache.config.has_host_tier:
            ticket.done = True
            return ticket
        asked = len(tokens)
        tokens = tuple(tokens[: self.cache.tree.aligned(asked)])
        m = self.cache.match(tokens, touch=False)
        ticket.uncached_tokens = asked - m.device_tokens - m.host_tokens
        start = m.last_node
        if not discover or start.depth >= len(tokens):
            self._fetch_remote_run(tokens, ticket, m)
            return ticket
        depth = start.depth
        prev = None if start.is_root else self.cache.page_keys(start)[-1]
        keys = self.cache.namespace.page_keys(
            prev, tokens[depth:], (len(tokens) - depth) // self.cache.page_size
        )
        self.cache.pin(start)

        def on_exists(fut) -> None:
            self.cache.unpin(start)
            found = 0
            if fut.exception() is None:
                for present in fut.result():
                    if not present:
                        break
                    found += 1
            if found:
                ticket.discovered_tokens = self._add_remote_nodes(tokens, depth, keys[:found])
            self._fetch_remote_run(tokens, ticket)

        self.cache.controller.exists(keys, on_exists)
        return ticket

    def _add_remote_nodes(self, tokens: tuple[int, ...], depth: int, keys: list[bytes]) -> int:
        """Record that the store holds pages [depth, depth + len(keys) pages) of `tokens`."""
        ps = self.cache.page_size
        end = depth + len(keys) * ps
        path, pos = self.cache.tree.walk(tokens[:end])
        if pos >= end or pos < depth:
            return 0  # already known, or the prefix it hangs from is gone meanwhile
        parent = path[-1] if path else self.cache.tree.root
        node = self.cache.tree.add_child(parent, tokens[pos:end])
        node.page_keys = keys[(pos - depth) // ps :]
        node.last_access = self.cache.clock
        self.cache.set_remote(node, True)
        self.cache.refresh(parent)
        return end - pos

    def _fetch_remote_run(
        self,
        tokens: tuple[int, ...],
        ticket: Prefetch,
        m: MatchResult | None = None,
    ) -> None:
        """Read the remote run of `tokens`' match (`m`, if it is current) into host."""
        if ticket.hold and ticket.released:  # its request left while the store was asked
            ticket.done = True
            return
        if m is None:
            m = self.cache.match(tokens, touch=False)
        nodes: list[TreeNode] = []
        n = m.last_node
        while n is not m.last_device_node and n.parent is not None:
            if n.host is None and n.device is None:
                nodes.append(n)
            n = n.parent
        nodes.reverse()
        # (node, pages) as submitted: a completion that finds a node split meanwhile by another
        # read's completion must not slice the reserved pages by its new length
        spans = [(x, len(x.key) // self.cache.page_size) for x in nodes]
        need = sum(k for _, k in spans)
        if need == 0 or not self.cache.cost.worth_loading(
            need * self.cache.page_size, need * self.cache.layout.page_bytes
        ):
            ticket.done = True  # nothing remote, or recomputing is estimated faster
            return
        anchor = m.last_node
        keys = [k for x in nodes for k in self.cache.page_keys(x)]  # host page i <- keys[i]
        self.cache.pin(anchor)  # keeps the whole run from eviction on every tier while in flight
        try:
            self.cache.make_room(HOST, need)
        except OutOfPages:
            self.cache.unpin(anchor)
            ticket.done = True
            return
        host = self.cache.host_pool.allocator.alloc(need)
        self.reserved_host.update(host)

        def on_read(fut) -> None:
            err = fut.exception()
            if err is not None and not isinstance(err, StoreUnavailable):  # that one is logged once
                log.warning("remote read of %d pages failed (%r); recomputing them", need, err)
            ok = fut.result() if fut.exception() is None else [False] * need
            self.reserved_host.difference_update(host)
            pos, failed, ps = 0, None, self.cache.page_size
            for x, k in spans:
                part, flags = host[pos : pos + k], ok[pos : pos + k]
                pos += k
                kx = len(x.key) // ps
                if 0 < kx < k:
                    # split meanwhile (a request handed the tree its computed pages above it): a
                    # split keeps the lower part in `x`, so it holds the tail of what was read
                    self.cache.host_pool.allocator.free(part[: k - kx])
                    part, flags, k = part[k - kx :], flags[k - kx :], kx
                good = k if all(flags) else flags.index(False)
                if failed is not None or x.host is not None or len(x.key) != k * ps:
                    # after a miss nothing is usable; a node filled meanwhile (by another read)
                    # is left as it is
                    good = 0
                elif good < k:
                    failed = x  # keep the verified pages before the first bad one
                if 0 < good < k:
                    x = self.cache.tree.split(x, good * ps)
                if good:
                    x.host = part[:good]
                    self.cache.residency_changed(x, HOST, True)
                    ticket.fetched_tokens += good * ps
                    if ticket.mark_kind is not None:
                        self.cache.prefetcher.mark(x, HOST, ticket.mark_kind)
                    self.cache.refresh(x)
                self.cache.host_pool.allocator.free(part[good:])
            if failed is not None:
                ticket.missed = True
                self.cache.counters.remote_read_misses += 1
                self.cache.set_remote(failed, False)
            # a failed node left with no copy anywhere is dropped (with what hangs below it) when
            # its last reference goes: here, or when another read or the hold lets go of it
            self._hold_or_unpin(ticket, anchor)
            ticket.done = True

        self.cache.controller.get_into_host(keys, host, on_read)

    def _hold_or_unpin(self, ticket: Prefetch, anchor: TreeNode) -> None:
        """Keep a finished fetch's pin for the waiting request, within the hold cap."""
        pages = ticket.fetched_tokens // self.cache.page_size
        cap = self.cache.config.host_pages // 2
        if ticket.hold and not ticket.released and pages and self.held_pages + pages <= cap:
            ticket.held, ticket.held_pages = anchor, pages
            self.held_pages += pages
        else:
            self.cache.unpin(anchor)

    def release_prefetch(self, ticket: Prefetch | None) -> None:
        """Give up a prefetch's hold on its host pages (idempotent; safe before it is done)."""
        if ticket is None:
            return
        ticket.released = True
        if ticket.held is not None:
            self.cache.unpin(ticket.held)
            self.held_pages -= ticket.held_pages
            ticket.held, ticket.held_pages = None, 0

    # ---- completion --------------------------------------------------------------------------
    def poll(self) -> int:
        """Apply finished remote operations to the tree; returns how many. Never blocks."""
        done = self.cache.controller.completed()
        for fut, callback in done:
            callback(fut)
        return len(done)

    def wait_one(self, timeout_s: float | None = None) -> None:
        """Block until one remote operation finishes (at most `timeout_s`, by default twice the
        remote timeout), then apply it and any others done."""
        wait = self.cache.config.remote_timeout_s * 2 if timeout_s is None else timeout_s
        item = self.cache.controller.wait_one(wait)
        if item is not None:
            fut, callback = item
            callback(fut)
        self.poll()

    def wait_idle(self, timeout_s: float | None = None) -> None:
        """Block until every remote operation in flight has finished and been applied."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while self.cache.controller.inflight:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            item = self.cache.controller.wait_one(left)
            if item is None:  # timed out, or woken (`wake()`) with nothing finished
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(
                        f"{self.cache.controller.inflight} remote operations still in flight"
                    )
                continue
            fut, callback = item
            callback(fut)
            self.poll()
