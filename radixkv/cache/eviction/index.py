"""Eviction: which unlocked leaves each tier gives up first.

Per tier, an `EvictionIndex` keeps the evictable leaves in a heap ordered by a policy's
priority (smallest goes first). Entries are invalidated lazily: a node carries the id of its one
live entry per tier, and any change to the node pushes a fresh entry, so an update and a pop cost
O(log n). The heap is rebuilt from live entries only when stale ones outnumber them; that costs
O(live) once per O(live) updates, so amortised O(1). No eviction ever scans all leaves.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

from radixkv.cache.eviction.policy import EvictionPolicy
from radixkv.cache.tree import TreeNode


def device_evictable(n: TreeNode) -> bool:
    """On device with no device child (so device residency stays prefix-closed). A copy in flight
    (io_ref) reads or fills host pages only, so it blocks this only if the node has no host copy
    to stay resident by."""
    return (
        n.device is not None
        and n.device_children == 0
        and n.lock_ref == 0
        and (n.io_ref == 0 or n.host is not None)
    )


def host_evictable(n: TreeNode) -> bool:
    """On host only (the device copy is gone), and either a leaf of the whole tree or already
    safe in the remote tier (then its children stay reachable through the remote copy; without
    this, a host node whose children were demoted to remote could never leave the host)."""
    return (
        n.host is not None
        and n.device is None
        and (not n.children or n.remote)
        and n.lock_ref == 0
        and n.io_ref == 0
    )


def remote_evictable(n: TreeNode) -> bool:
    """Known only to the remote tier and a leaf: forgetting it drops the node."""
    return (
        n.remote
        and n.host is None
        and n.device is None
        and not n.children
        and n.lock_ref == 0
        and n.io_ref == 0
    )


EVICTABLE: tuple[Callable[[TreeNode], bool], ...] = (
    device_evictable,
    host_evictable,
    remote_evictable,
)


class EvictionIndex:
    """The evictable leaves of one tier, in policy order (one heap per policy queue)."""

    def __init__(self, tier: int, policy: EvictionPolicy) -> None:
        self.tier = tier
        self.policy = policy
        self.evictable = EVICTABLE[tier]
        self._heaps: list[list[tuple[object, int, TreeNode]]] = [[] for _ in range(policy.queues)]
        self.sizes = [0] * policy.queues  # evictable tokens per queue
        self._seq = 0
        self.live = 0

    def __len__(self) -> int:
        return self.live

    def _unfile(self, node: TreeNode) -> None:
        """Forget node's live entry (its heap entry goes stale)."""
        t = self.tier
        queue, _, tokens = node.heap_prio[t]
        self.sizes[queue] -= tokens
        node.heap_token[t] = None
        self.live -= 1

    def update(self, node: TreeNode) -> None:
        """Re-file `node` after any change to its residency, references, children or stats."""
        t = self.tier
        if not self.evictable(node):
            if node.heap_token[t] is not None:
                self._unfile(node)
            return
        queue = self.policy.queue(node)
        filed = (queue, self.policy.priority(node), len(node.key))
        if node.heap_token[t] is not None:
            if node.heap_prio[t] == filed:
                return
            self._unfile(node)
        self.live += 1
        self.sizes[queue] += filed[2]
        self._seq += 1
        node.heap_token[t], node.heap_prio[t] = self._seq, filed
        heap = self._heaps[queue]
        heapq.heappush(heap, (filed[1], self._seq, node))
        if len(heap) > 2 * self.live + 1024:
            self._compact()

    def pop(self) -> TreeNode | None:
        """Remove and return the lowest-priority evictable node of the policy's queue, or None."""
        if not self.live:
            return None
        t = self.tier
        if len(self._heaps) == 1:
            heap = self._heaps[0]
        else:
            heads = [self._head(q) for q in range(len(self._heaps))]
            heap = self._heaps[self.policy.pick(self.sizes, heads)]  # holds evictable tokens
        while heap:
            prio, seq, node = heapq.heappop(heap)
            if node.heap_token[t] == seq:
                self._unfile(node)
                self.policy.on_evict(node)
                return node
        raise AssertionError("a queue with evictable tokens held no live entry")

    def _head(self, queue: int) -> object | None:
        """The lowest live priority of a queue (stale entries on top are dropped), or None."""
        heap, t = self._heaps[queue], self.tier
        while heap and heap[0][2].heap_token[t] != heap[0][1]:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def discard(self, node: TreeNode) -> None:
        if node.heap_token[self.tier] is not None:
            self._unfile(node)

    def _compact(self) -> None:
        t = self.tier
        for q, heap in enumerate(self._heaps):
            self._heaps[q] = [e for e in heap if e[2].heap_token[t] == e[1]]
            heapq.heapify(self._heaps[q])
