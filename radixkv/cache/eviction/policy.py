"""Eviction policies: priority(node) -> comparable, smallest evicted first. The base class and
the classic ones (LRU, LFU, segmented LRU); `adaptive` and `workload` hold the others."""

from __future__ import annotations

from collections.abc import Callable

from radixkv.cache.tree import TreeNode


class EvictionPolicy:
    """priority(node): smallest evicted first. A policy with several queues (`queues` > 1)
    files each node in `queue(node)` and, at each eviction, `pick`s the queue to evict from given
    each queue's evictable tokens (queues of the ARC kind); priority orders each queue."""

    name = "base"
    queues = 1
    observes = False  # wants every request's prompt (`observe`)

    def priority(self, node: TreeNode) -> object:
        raise NotImplementedError

    def queue(self, node: TreeNode) -> int:
        return 0

    def pick(self, sizes: list[int], heads: list[object | None]) -> int:
        """The queue to evict from next, among those with tokens in `sizes` (`heads`: each
        queue's lowest priority, None when empty)."""
        return next(q for q, n in enumerate(sizes) if n)

    def configure(self, capacity_tokens: int) -> None:  # noqa: B027 - optional hook
        """Told the tier's size once, when the cache is built."""

    def observe(self, chunk_ids: list[int]) -> None:  # noqa: B027 - optional hook
        """Told of each request's prompt as chained chunk ids (`radixkv.cache.eviction.duel`)."""

    def on_evict(self, node: TreeNode) -> None:  # noqa: B027 - optional hook
        """Told of each node the index gives up (for policies that learn from evictions)."""


class LRUPolicy(EvictionPolicy):
    name = "lru"

    def priority(self, node: TreeNode) -> object:
        return node.last_access


class LFUPolicy(EvictionPolicy):
    name = "lfu"

    def priority(self, node: TreeNode) -> object:
        return (node.hits, node.last_access)


class SLRUPolicy(EvictionPolicy):
    """Segmented LRU: nodes reused at least `protect_after` times are evicted only after all
    probationary ones; LRU inside each segment."""

    name = "slru"

    def __init__(self, protect_after: int = 1) -> None:
        self.protect_after = protect_after

    def priority(self, node: TreeNode) -> object:
        return (node.hits >= self.protect_after, node.last_access)


POLICIES: dict[str, Callable[[], EvictionPolicy]] = {
    "lru": LRUPolicy,
    "lfu": LFUPolicy,
    "slru": SLRUPolicy,
}
