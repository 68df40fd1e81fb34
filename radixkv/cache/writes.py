"""Write policies: when a page is copied a tier down (device -> host -> remote).

write_through copies every new page down at once; write_through_selective only once a node has
been hit `selective_threshold` times; write_back copies on demotion (eviction). Host -> remote
follows the same rule. `TierWrites` is a collaborator owned by `HiRadixCache` (`cache.writes`):
it decides and starts copies; pages, nodes and references stay the cache's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixkv.cache.remote_admission import RemoteAdmission
from radixkv.cache.tiers import HOST
from storage import OutOfPages

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner
    from radixkv.cache.tree import TreeNode


MAX_WRITE_CALLS = 4  # remote puts in flight at most (each carries a node's pages, batched)


class TierWrites:
    def __init__(self, cache: PageOwner) -> None:
        self.cache = cache
        self.selective = cache.config.write_policy == "write_through_selective"
        share = cache.config.remote_admission
        # None: every page the write policy copies down goes on to remote
        self.admission = RemoteAdmission(cache.page_size, share) if share > 0 else None

    def wants_copy(self, node: TreeNode) -> bool:
        wp = self.cache.config.write_policy
        return wp == "write_through" or (
            wp == "write_through_selective" and node.hits >= self.cache.config.selective_threshold
        )

    def apply(self, node: TreeNode) -> None:
        """Copy a node one or two tiers down now if the write policy says so (and, to remote, the
        admission policy)."""
        if self.admission is not None and node.admit_class is None:
            self.admission.note_insert(node)
        if not self.wants_copy(node):
            return
        if node.device is not None and node.host is None and self.cache.config.has_host_tier:
            self.backup_to_host(node)
        if (
            node.host is not None
            and not node.remote
            and self.cache.store is not None
            and node.io_ref == 0
            and (self.admission is None or self.admission.admit_new(node, self.cache.clock))
        ):
            self.write_remote(node)

    def backup_to_host(self, node: TreeNode) -> bool:
        """Copy a device node to host; False if the host tier has no room."""
        try:
            self.cache.make_room(HOST, len(node.device))
        except OutOfPages:
            return False
        host = self.cache.host_pool.allocator.alloc(len(node.device))
        self.cache.controller.device_to_host(node.device, host)
        node.host = host
        self.cache.residency_changed(node, HOST, True)
        self.cache.refresh(node)
        return True

    def _backlog_full(self, pages: int) -> bool:
        """Whether the store is behind: `pages` more would take the remote write backlog past
        its bound in pages, `MAX_WRITE_CALLS` puts are in flight already, or the oldest has
        waited a quarter of the remote timeout. (A call queued behind many others would time out
        and mark the tier down: with at most 4 ahead, only a store taking a quarter of the
        timeout per call does.) Inline, the pages alone count: calls wait for the owner there by
        design, and a replay must not depend on this machine's speed. If the store is behind,
        the pages are counted as shed and not written."""
        c, config = self.cache.controller, self.cache.config
        if c.write_pages_inflight == 0:
            return False  # (a node larger than the bound still goes when nothing is in flight)
        if c.write_pages_inflight + pages <= config.write_backlog_pages and (
            c.inline
            or (
                c.write_calls_inflight < MAX_WRITE_CALLS
                and c.oldest_write_age_s() < config.remote_timeout_s / 4
            )
        ):
            return False
        self.cache.counters.remote_writes_shed += pages
        return True

    def write_remote(self, node: TreeNode) -> None:
        """Write-through host -> remote, asynchronously; the node is pinned until acknowledged.
        Shed (not written now) while the write backlog is full: it may go when it leaves host."""
        if self._backlog_full(len(node.host)):
            return
        covered = len(node.key)
        self.cache.pin(node)

        def done(fut) -> None:
            self.cache.unpin(node)
            ok = fut.exception() is None and all(fut.result())
            if not ok:
                self.cache.counters.remote_write_failures += 1
                return
            n, span = node, 0  # mark the written range, which splits may have spread over ancestors
            while n.parent is not None and span + len(n.key) <= covered:
                self.cache.set_remote(n, True)
                span += len(n.key)
                n = n.parent

        self.cache.controller.put_from_host(list(node.host), self.cache.page_keys(node), done)

    def keep_on_demotion(self, node: TreeNode) -> bool:
        """Write-back and write-through save an evicted page a tier down; selective only a hot one."""
        return not self.selective or node.hits >= self.cache.config.selective_threshold

    def keep_on_remote(self, node: TreeNode) -> bool:
        """A host node leaving, not yet remote: whether it is written back there."""
        return self.keep_on_demotion(node) and (
            self.admission is None or self.admission.admit_leaving(node, self.cache.clock)
        )

    def demote_to_remote(self, node: TreeNode) -> None:
        """Write-back host -> remote: snapshot now (the host pages are freed next), store async.

        The node is marked remote at once; if the write fails, a later read misses and recomputes.
        Shed while the write backlog is full: the pages then leave the cache.
        """
        if self._backlog_full(len(node.host)):
            return
        blobs = self.cache.controller.encode(node.host, self.cache.page_keys(node))

        def done(fut) -> None:
            if fut.exception() is not None or not all(fut.result()):
                self.cache.counters.remote_write_failures += 1

        self.cache.controller.put_blobs(blobs, done)
        self.cache.set_remote(node, True)
