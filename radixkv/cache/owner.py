"""What the cache's helpers may use of the cache that owns them.

The helpers (evictor, tier writes, remote reads, promotion, the prefetcher, the hot-prefix
record, the integrity check and the report) are collaborators of `HiRadixCache`: they read its
state and change it only through the operations below, which keep page ownership and the
eviction indexes right. They type against this protocol, never the class, so no cache module
imports `hicache` but the package's front door.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from radixkv.cache.config import CacheConfig
from radixkv.cache.cost_model import LoadCostModel
from radixkv.cache.data_plane import DataPlane
from radixkv.cache.namespace import CacheNamespace
from radixkv.cache.tree import RadixTree, TreeNode
from radixkv.cache.types import CacheCounters, MatchResult
from storage import DevicePool, HostPool, KVLayout, RemoteStore


class PageOwner(Protocol):
    """The cache as its helpers see it (`HiRadixCache` implements it)."""

    layout: KVLayout
    config: CacheConfig
    page_size: int
    namespace: CacheNamespace
    tree: RadixTree
    device_pool: DevicePool
    host_pool: HostPool
    store: RemoteStore | None
    controller: DataPlane
    counters: CacheCounters
    cost: LoadCostModel
    clock: int
    request_pages: set[int]  # device pages owned by running requests
    locked_device_pages: int
    remote_pages_known: int
    # the other helpers: typed loosely, since each one's own module imports this protocol
    evictor: Any
    writes: Any
    reads: Any
    prefetcher: Any

    def match(self, tokens: Sequence[int], *, touch: bool = True) -> MatchResult: ...

    def lock(self, node: TreeNode) -> None:
        """Protect a path from eviction on every tier (a running request)."""

    def unlock(self, node: TreeNode) -> None: ...

    def pin(self, node: TreeNode) -> None:
        """Like a lock, for a copy in flight that reads or writes the path's pages."""

    def unpin(self, node: TreeNode) -> None: ...

    def refresh(self, node: TreeNode) -> None:
        """Re-rank a changed node in every tier's eviction index."""

    def make_room(self, tier: int, num_pages: int) -> None:
        """Evict until `num_pages` of `tier` are free (raises OutOfPages)."""

    def set_remote(self, node: TreeNode, on: bool) -> None:
        """Record whether the remote tier holds the node's pages."""

    def drop(self, node: TreeNode) -> None:
        """Remove a node no tier holds, with its subtree."""

    def page_keys(self, node: TreeNode) -> list[bytes]: ...

    def residency_changed(self, node: TreeNode, tier: int, stored: bool) -> None:
        """A node's pages arrived on or left a tier (for the KV-event listener)."""

    def wait_one(self, timeout_s: float | None = None) -> None: ...

    def check_integrity(self) -> dict: ...

    def remote_status(self) -> dict | None: ...
