"""The evictor: per-tier priority indexes of evictable nodes, and eviction itself.

`Evictor` is a collaborator owned by `HiRadixCache` (`cache.evictor`). It keeps one
`EvictionIndex` per tier up to date as nodes change (`refresh`), so making room costs O(log n)
per evicted node, never a scan; evicting a device node demotes it to host (and a host node to
remote) when the write policy keeps it. Pages and nodes stay the cache's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

from radixkv.cache.eviction.duel import chunk_ids
from radixkv.cache.eviction.index import EvictionIndex
from radixkv.cache.eviction.policy import EvictionPolicy
from radixkv.cache.remote_admission import PENDING
from radixkv.cache.tiers import DEVICE, HOST, REMOTE
from storage import OutOfPages

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner
    from radixkv.cache.tree import TreeNode


class Evictor:
    def __init__(self, cache: PageOwner, policy_factory: Callable[[], EvictionPolicy]) -> None:
        self.cache = cache
        self.indexes = [EvictionIndex(tier, policy_factory()) for tier in (DEVICE, HOST, REMOTE)]
        ps, config = cache.page_size, cache.config
        for index, pages in zip(
            self.indexes, (config.device_pages, config.host_pages, config.remote_pages), strict=True
        ):
            index.policy.configure(pages * ps)
        self._observers = [i.policy for i in self.indexes if i.policy.observes]

    def observe(self, tokens) -> None:
        """A request's prompt, for policies that learn from the whole access stream."""
        if self._observers:
            ids = chunk_ids(tokens)
            for policy in self._observers:
                policy.observe(ids)

    def refresh(self, node: TreeNode) -> None:
        """Re-rank a node whose state changed (residency, references, hits, children)."""
        if node.parent is not None:  # removed nodes and the root are never indexed
            for index in self.indexes:
                index.update(node)

    def discard(self, node: TreeNode) -> None:
        for index in self.indexes:
            index.discard(node)

    def make_room(self, tier: int, num_pages: int) -> None:
        """Evict from `tier` until `num_pages` are free (remote: until within its budget)."""
        if tier == REMOTE:
            while self.cache.remote_pages_known > self.cache.config.remote_pages:
                node = self.indexes[REMOTE].pop()
                if node is None:
                    return  # a soft budget: the store's own cap bounds what it holds
                self.cache.counters.evicted_pages[REMOTE] += len(node.key) // self.cache.page_size
                self.cache.set_remote(node, False)
                self.cache.drop(node)
            return
        pool = self.cache.device_pool if tier == DEVICE else self.cache.host_pool
        if num_pages > pool.num_pages:
            raise OutOfPages(
                f"{num_pages} pages asked of a {pool.num_pages}-page {('device', 'host')[tier]} pool"
            )
        while pool.allocator.num_free < num_pages:
            node = self.indexes[tier].pop()
            if node is None and self.cache.controller.inflight:
                # Pages are pinned by remote copies in flight: wait for one to finish (an
                # unavoidable wait, bounded by remote_timeout_s) and try again.
                self.cache.wait_one()
                continue
            if node is None:
                raise OutOfPages(
                    f"{('device', 'host')[tier]} pool: {num_pages} pages needed, "
                    f"{pool.allocator.num_free} free and nothing evictable"
                )
            self.evict_device(node) if tier == DEVICE else self.evict_host(node)

    def evict(self, tier: int, num_pages: int) -> int:
        """Free at least `num_pages` of a tier by eviction if possible; returns pages freed."""
        pool = self.cache.device_pool if tier == DEVICE else self.cache.host_pool
        before = pool.allocator.num_free
        target = min(pool.num_pages, before + num_pages)
        with contextlib.suppress(OutOfPages):
            self.make_room(tier, target)
        return pool.allocator.num_free - before

    def evict_device(self, node: TreeNode) -> None:
        # (its insert found the host full); write-through then copies it on to remote too
        if (
            node.host is None
            and self.cache.config.has_host_tier
            and self.cache.writes.keep_on_demotion(node)
            and self.cache.writes.backup_to_host(node)
        ):
            self.cache.writes.apply(node)
        if node.prefetch_mark:
            self.cache.prefetcher.on_leave(node, DEVICE)
        pages, node.device = node.device, None
        self.cache.residency_changed(node, DEVICE, False)
        self.cache.device_pool.allocator.free(pages)
        node.parent.device_children -= 1
        self.cache.counters.evicted_pages[DEVICE] += len(pages)
        self.cache.refresh(node.parent)
        self.drop_or_refresh(node)

    def drop_or_refresh(self, node: TreeNode) -> None:
        if node.resident_anywhere():
            self.cache.refresh(node)
        else:
            self.cache.drop(node)

    def evict_host(self, node: TreeNode) -> None:
        if (
            not node.remote
            and self.cache.store is not None
            and self.cache.writes.keep_on_remote(node)
        ):
            self.cache.writes.demote_to_remote(node)
        if node.prefetch_mark:
            self.cache.prefetcher.on_leave(node, HOST)
        pages, node.host = node.host, None
        self.cache.residency_changed(node, HOST, False)
        self.cache.host_pool.allocator.free(pages)
        self.cache.counters.evicted_pages[HOST] += len(pages)
        self.drop_or_refresh(node)

    def drop(self, node: TreeNode) -> None:
        """Remove a node no tier holds, with any subtree (unreachable without this prefix):
        its pages on every tier are freed, its index entries and its marks forgotten."""
        cache = self.cache
        stack, doomed = [node], []
        while stack:
            n = stack.pop()
            doomed.append(n)
            stack.extend(n.children.values())
        for n in reversed(doomed):  # leaves first
            assert n.lock_ref == 0 and n.io_ref == 0, "dropping a referenced node"
            if n.admit_fate == PENDING:  # written through, leaving the tree unread
                cache.writes.admission.on_gone(n)
            if n.prefetch_mark:
                cache.prefetcher.on_leave(n, DEVICE)
                cache.prefetcher.on_leave(n, HOST)
            if n.device is not None:
                cache.device_pool.allocator.free(n.device)
                n.parent.device_children -= 1
                n.device = None
                cache.residency_changed(n, DEVICE, False)
            if n.host is not None:
                cache.host_pool.allocator.free(n.host)
                n.host = None
                cache.residency_changed(n, HOST, False)
            if n.remote:
                cache.set_remote(n, False)
            self.discard(n)
            parent = n.parent
            cache.tree.remove_leaf(n)
            cache.refresh(parent)

    def drop_unheld(self) -> int:
        """Drop every node no request or copy holds, with its subtree; returns nodes dropped."""
        tree = self.cache.tree
        before, stack = tree.num_nodes, [tree.root]
        while stack:
            node = stack.pop()
            for child in list(node.children.values()):
                if child.lock_ref == 0 and child.io_ref == 0:
                    self.cache.drop(child)
                else:
                    stack.append(child)
        return before - tree.num_nodes
