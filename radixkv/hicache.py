"""HiRadixCache: the hierarchical radix cache over device, host and remote tiers.

This is the control plane and the single owner of every page: it decides residency, and it
alone allocates and frees pool pages. A page index in a pool is at every moment exactly one of
  free | owned by one tree node | owned by one running request (device) | reserved for a remote
  read in flight (host)
and `check_integrity()` proves it.

Residency rules:
  - device residency is prefix-closed: a node on device has its whole path on device;
  - a node stays in the tree while any tier holds it or it has children, so every prefix of a
    resident node is resident somewhere;
  - the host tier is inclusive (a device node keeps its host copy) and so should be larger.

Use from a scheduler:  m = match(tokens) -> lock(m.last_node) -> load(m) (and prefetch() for a
remote part) -> alloc(n) for new pages -> compute -> insert(tokens, pages) -> unlock(node).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from radixkv.config import CacheConfig
from radixkv.controller import CacheController
from radixkv.cost_model import LoadCostModel
from radixkv.eviction import DEVICE, HOST, REMOTE, EvictionIndex, EvictionPolicy, make_policy
from radixkv.namespace import CacheNamespace
from radixkv.prefetch import RemoteReads
from radixkv.tree import RadixTree, TreeNode
from storage import DevicePool, HostPool, KVLayout, OutOfPages, RemoteStore, open_store

log = logging.getLogger(__name__)


@dataclass
class MatchResult:
    """The cached prefix of a token sequence, tier by tier (token counts, page-aligned).

    tokens [0, device_tokens) are on device (`device_pages`); the next `host_tokens` on host;
    the next `remote_tokens` on host or remote (a prefetch brings them to host).
    """

    device_pages: list[int]
    device_tokens: int
    host_tokens: int
    remote_tokens: int
    last_device_node: TreeNode
    last_node: TreeNode

    @property
    def cached_tokens(self) -> int:
        return self.device_tokens + self.host_tokens + self.remote_tokens


@dataclass
class CacheCounters:
    matches: int = 0
    tokens_queried: int = 0
    tokens_hit: list[int] = field(default_factory=lambda: [0, 0, 0])  # by tier
    evicted_pages: list[int] = field(default_factory=lambda: [0, 0, 0])  # by tier
    inserted_pages: int = 0
    duplicate_pages: int = 0
    remote_write_failures: int = 0
    remote_read_misses: int = 0


class HiRadixCache(RemoteReads):
    """The hierarchical cache; remote reads, polling and flushing live in `radixkv.prefetch`."""

    def __init__(
        self,
        layout: KVLayout,
        config: CacheConfig,
        *,
        namespace: CacheNamespace | None = None,
        store: RemoteStore | None = None,
        remote_url: str | None = None,
        device: str | None = None,
        policy_factory: Callable[[], EvictionPolicy] | None = None,
    ) -> None:
        if store is not None and remote_url is not None:
            raise ValueError("give either a store or a remote_url, not both")
        if remote_url is not None:
            store = open_store(remote_url)
        if config.remote_pages > 0 and store is None:
            raise ValueError("remote_pages > 0 needs a remote store (store= or remote_url=)")
        if store is not None and config.remote_pages == 0:
            raise ValueError("a remote store was given but CacheConfig.remote_pages is 0")
        self.layout = layout
        self.config = config
        self.page_size = layout.page_size
        self.namespace = namespace or CacheNamespace("unnamed-model", layout)
        if self.namespace.layout != layout:
            raise ValueError("the namespace was made for a different KV layout")
        self.tree = RadixTree(layout.page_size, on_split=self._on_split)
        self.device_pool = DevicePool(layout, config.device_pages, device)
        self.host_pool = HostPool(layout, config.host_pages)
        self.store = store
        self.controller = CacheController(
            self.device_pool,
            self.host_pool,
            self.store,
            self.namespace.digest,
            config.remote_timeout_s,
            inline=config.remote_io == "inline",
        )
        factory = policy_factory or (lambda: make_policy(config.policy))
        self.indexes = [EvictionIndex(tier, factory()) for tier in (DEVICE, HOST, REMOTE)]
        self.request_pages: set[int] = set()  # device pages owned by running requests
        self.reserved_host: set[int] = set()  # host pages reserved by remote reads in flight
        self.remote_pages_known = 0
        self.prefetch_held_pages = 0  # host pages pinned for waiting requests (`release_prefetch`)
        self.clock = 0
        self.counters = CacheCounters()
        self.cost = LoadCostModel(margin=config.remote_load_margin)
        self.controller.read_observer = lambda nbytes, secs: self.cost.observe_remote_read(
            nbytes, secs, small_bytes=layout.page_bytes
        )
        self._selective = config.write_policy == "write_through_selective"

    # ---- queries ---------------------------------------------------------------------------
    def match(self, tokens: Sequence[int], *, touch: bool = True) -> MatchResult:
        """The cached prefix of `tokens` by tier; `touch` counts it as a hit for the policies
        (and advances the logical clock; a peek with touch=False changes no statistics)."""
        if touch:
            self.clock += 1
        path, _ = self.tree.walk(tokens)
        root = self.tree.root
        device_pages: list[int] = []
        lens = [0, 0, 0]
        last_device = last = root
        tier = DEVICE
        for node in path:
            if tier == DEVICE and node.device is not None:
                device_pages += node.device
                last_device = node
            elif tier <= HOST and node.host is not None:
                assert node.device is None, "device residency is not prefix-closed"
                tier = HOST
            elif node.host is not None or node.remote:
                assert node.device is None, "device residency is not prefix-closed"
                tier = REMOTE
            else:
                break
            lens[tier] += len(node.key)
            last = node
        if touch:
            self.counters.matches += 1
            self.counters.tokens_queried += self.tree.aligned(len(tokens))
            for t in (DEVICE, HOST, REMOTE):
                self.counters.tokens_hit[t] += lens[t]
            for node in path:
                node.hits += 1
                node.last_access = self.clock
                node.diverged = False
                self._refresh(node)
                if node is last:
                    break
            if self._selective:
                for node in path[: path.index(last) + 1] if last is not root else ():
                    self._apply_write_policy(node)
        return MatchResult(device_pages, lens[DEVICE], lens[HOST], lens[REMOTE], last_device, last)

    # ---- references --------------------------------------------------------------------------
    def lock(self, node: TreeNode) -> None:
        """Protect `node` and its ancestors from eviction on every tier (a running request)."""
        self._acquire(node, "lock_ref")

    def unlock(self, node: TreeNode) -> None:
        self._release(node, "lock_ref")

    def _pin(self, node: TreeNode) -> None:
        """Like a lock, for a copy in flight that reads or writes the path's pages."""
        self._acquire(node, "io_ref")

    def _unpin(self, node: TreeNode) -> None:
        self._release(node, "io_ref")

    def _acquire(self, node: TreeNode, ref: str) -> None:
        for n in node.path_to_root():
            count = getattr(n, ref) + 1
            setattr(n, ref, count)
            if count == 1:
                self._refresh(n)

    def _release(self, node: TreeNode, ref: str) -> None:
        orphan = None  # the highest node left with no residency (a remote read failed under it)
        for n in node.path_to_root():
            count = getattr(n, ref) - 1
            assert count >= 0, f"{ref} released more often than taken"
            setattr(n, ref, count)
            if count == 0:
                self._refresh(n)
            if n.lock_ref == 0 and n.io_ref == 0 and not n.resident_anywhere():
                orphan = n
        if orphan is not None:
            self._drop(orphan)

    def _on_split(self, upper: TreeNode, lower: TreeNode) -> None:
        self._refresh(upper)
        self._refresh(lower)  # its key now starts elsewhere: size- and key-aware priorities change

    def _refresh(self, node: TreeNode) -> None:
        if node.parent is not None:  # removed nodes and the root are never indexed
            for index in self.indexes:
                index.update(node)

    # ---- request pages -----------------------------------------------------------------------
    def alloc(self, num_pages: int) -> list[int]:
        """Device pages for a request's new tokens, evicting as needed; raises OutOfPages.

        The request owns them until it passes them to `insert` or gives them back with `free`.
        """
        self._make_room(DEVICE, num_pages)
        pages = self.device_pool.allocator.alloc(num_pages)
        self.request_pages.update(pages)
        return pages

    def free(self, pages: Sequence[int]) -> None:
        """A request returns device pages it did not insert (aborted, or a partial last page)."""
        for p in pages:
            if p not in self.request_pages:
                raise ValueError(f"device page {p} is not owned by a request")
        self.request_pages.difference_update(pages)
        self.device_pool.allocator.free(pages)

    # ---- insertion ---------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> TreeNode:
        """Hand a request's pages for `tokens[: len(pages) * page_size]` to the tree.

        `pages` covers the whole prefix: pages the request got from a match are the tree's own;
        the rest must be request-owned. Where the tree already holds a page on device, the
        request's copy is a duplicate and is freed here. Returns the deepest node of the prefix.
        """
        ps = self.page_size
        n_tokens = len(pages) * ps
        if len(tokens) < n_tokens:
            raise ValueError(f"{len(pages)} pages need {n_tokens} tokens, got {len(tokens)}")
        self.clock += 1
        tokens = tuple(tokens[:n_tokens])
        path, matched = self.tree.walk(tokens)
        duplicates: list[int] = []
        adopted: list[TreeNode] = []
        pos = 0
        node = self.tree.root
        for node in path:
            k0, k = pos // ps, len(node.key) // ps
            given = list(pages[k0 : k0 + k])
            if node.device is not None:
                for g, own in zip(given, node.device, strict=True):
                    if g != own:
                        assert g in self.request_pages, (
                            f"device page {g} is neither the tree's nor a request's"
                        )
                        duplicates.append(g)
            else:
                self._take_request_pages(given)
                node.device = given
                node.parent.device_children += 1
                adopted.append(node)
            node.last_access = self.clock
            pos += len(node.key)
        if pos < n_tokens:
            given = list(pages[pos // ps :])
            self._take_request_pages(given)
            node = self.tree.add_child(node, tokens[pos:])
            node.device = given
            node.parent.device_children += 1
            node.last_access = self.clock
            adopted.append(node)
        if duplicates:
            self.free(duplicates)
            self.counters.duplicate_pages += len(duplicates)
        for n in adopted:
            self.counters.inserted_pages += len(n.device)
            self._refresh(n)
            self._refresh(n.parent)
            self._apply_write_policy(n)
        return node

    def _take_request_pages(self, pages: list[int]) -> None:
        for p in pages:
            assert p in self.request_pages, f"device page {p} is not owned by a request"
        self.request_pages.difference_update(pages)

    # ---- write policies ----------------------------------------------------------------------
    def _wants_copy(self, node: TreeNode) -> bool:
        wp = self.config.write_policy
        return wp == "write_through" or (
            wp == "write_through_selective" and node.hits >= self.config.selective_threshold
        )

    def _apply_write_policy(self, node: TreeNode) -> None:
        """Copy a node one or two tiers down now if the write policy says so."""
        if not self._wants_copy(node):
            return
        if node.device is not None and node.host is None and self.config.host_pages:
            self._backup_to_host(node)
        if (
            node.host is not None
            and not node.remote
            and self.store is not None
            and node.io_ref == 0
        ):
            self._write_remote(node)

    def _backup_to_host(self, node: TreeNode) -> bool:
        """Copy a device node to host; False if the host tier has no room."""
        try:
            self._make_room(HOST, len(node.device))
        except OutOfPages:
            return False
        host = self.host_pool.allocator.alloc(len(node.device))
        self.controller.device_to_host(node.device, host)
        node.host = host
        self._refresh(node)
        return True

    def page_keys(self, node: TreeNode) -> list[bytes]:
        """The chained remote keys of a node's pages (computed once, cached on the node)."""
        if node.page_keys is None:
            parent = node.parent
            prev = None if parent is None or parent.is_root else self.page_keys(parent)[-1]
            node.page_keys = self.namespace.page_keys(
                prev, node.key, len(node.key) // self.page_size
            )
        return node.page_keys

    def _write_remote(self, node: TreeNode) -> None:
        """Write-through host -> remote, asynchronously; the node is pinned until acknowledged."""
        covered = len(node.key)
        self._pin(node)

        def done(fut) -> None:
            self._unpin(node)
            ok = fut.exception() is None and all(fut.result())
            if not ok:
                self.counters.remote_write_failures += 1
                return
            n, span = node, 0  # mark the written range, which splits may have spread over ancestors
            while n.parent is not None and span + len(n.key) <= covered:
                self._set_remote(n, True)
                span += len(n.key)
                n = n.parent

        self.controller.put_from_host(list(node.host), self.page_keys(node), done)

    def _set_remote(self, node: TreeNode, on: bool) -> None:
        if node.remote != on:
            node.remote = on
            self.remote_pages_known += (1 if on else -1) * (len(node.key) // self.page_size)
            self._refresh(node)
            if on:
                self._make_room(REMOTE, 0)

    # ---- eviction ----------------------------------------------------------------------------
    def _make_room(self, tier: int, num_pages: int) -> None:
        """Evict from `tier` until `num_pages` are free (remote: until within its budget)."""
        if tier == REMOTE:
            while self.remote_pages_known > self.config.remote_pages:
                node = self.indexes[REMOTE].pop()
                if node is None:
                    return  # a soft budget: the store's own cap bounds what it holds
                self.counters.evicted_pages[REMOTE] += len(node.key) // self.page_size
                self._set_remote(node, False)
                self._drop(node)
            return
        pool = self.device_pool if tier == DEVICE else self.host_pool
        if num_pages > pool.num_pages:
            raise OutOfPages(
                f"{num_pages} pages asked of a {pool.num_pages}-page {('device', 'host')[tier]} pool"
            )
        while pool.allocator.num_free < num_pages:
            node = self.indexes[tier].pop()
            if node is None and self.controller.inflight:
                # Pages are pinned by remote copies in flight: wait for one to finish (an
                # unavoidable wait, bounded by remote_timeout_s) and try again.
                self.wait_one()
                continue
            if node is None:
                raise OutOfPages(
                    f"{('device', 'host')[tier]} pool: {num_pages} pages needed, "
                    f"{pool.allocator.num_free} free and nothing evictable"
                )
            self._evict_device(node) if tier == DEVICE else self._evict_host(node)

    def evict(self, tier: int, num_pages: int) -> int:
        """Free at least `num_pages` of a tier by eviction if possible; returns pages freed."""
        pool = self.device_pool if tier == DEVICE else self.host_pool
        before = pool.allocator.num_free
        target = min(pool.num_pages, before + num_pages)
        with contextlib.suppress(OutOfPages):
            self._make_room(tier, target)
        return pool.allocator.num_free - before

    def _evict_device(self, node: TreeNode) -> None:
        # (its insert found the host full); write-through then copies it on to remote too
        if (
            node.host is None
            and self.config.host_pages
            and self._keep_on_demotion(node)
            and self._backup_to_host(node)
        ):
            self._apply_write_policy(node)
        pages, node.device = node.device, None
        self.device_pool.allocator.free(pages)
        node.parent.device_children -= 1
        self.counters.evicted_pages[DEVICE] += len(pages)
        self._refresh(node.parent)
        self._drop_or_refresh(node)

    def _drop_or_refresh(self, node: TreeNode) -> None:
        if node.resident_anywhere():
            self._refresh(node)
        else:
            self._drop(node)

    def _evict_host(self, node: TreeNode) -> None:
        if not node.remote and self.store is not None and self._keep_on_demotion(node):
            self._demote_to_remote(node)
        pages, node.host = node.host, None
        self.host_pool.allocator.free(pages)
        self.counters.evicted_pages[HOST] += len(pages)
        self._drop_or_refresh(node)

    def _keep_on_demotion(self, node: TreeNode) -> bool:
        """Write-back and write-through save an evicted page a tier down; selective only a hot one."""
        return not self._selective or node.hits >= self.config.selective_threshold

    def _demote_to_remote(self, node: TreeNode) -> None:
        """Write-back host -> remote: snapshot now (the host pages are freed next), store async.

        The node is marked remote at once; if the write fails, a later read misses and recomputes.
        """
        blobs = self.controller.encode(node.host, self.page_keys(node))

        def done(fut) -> None:
            if fut.exception() is not None or not all(fut.result()):
                self.counters.remote_write_failures += 1

        self.controller.put_blobs(blobs, done)
        self._set_remote(node, True)

    def _drop(self, node: TreeNode) -> None:
        """Remove a node no tier holds, with any subtree (unreachable without this prefix)."""
        stack, doomed = [node], []
        while stack:
            n = stack.pop()
            doomed.append(n)
            stack.extend(n.children.values())
        for n in reversed(doomed):  # leaves first
            assert n.lock_ref == 0 and n.io_ref == 0, "dropping a referenced node"
            if n.device is not None:
                self.device_pool.allocator.free(n.device)
                n.parent.device_children -= 1
                n.device = None
            if n.host is not None:
                self.host_pool.allocator.free(n.host)
                n.host = None
            if n.remote:
                self._set_remote(n, False)
            for index in self.indexes:
                index.discard(n)
            parent = n.parent
            self.tree.remove_leaf(n)
            self._refresh(parent)

    # ---- promotion ---------------------------------------------------------------------------
    def load(self, match: MatchResult, *, overlap: bool = False) -> int:
        """Copy the host-resident part of a match to the device; returns tokens loaded.

        The caller holds a lock on `match.last_node`. Loading stops at the first node not on host
        (a remote part needs `prefetch` first). Afterwards `match(tokens)` sees them on device.
        With `overlap` (the scheduler), the next forward waits layer by layer on the events of
        `controller.take_layer_events()`.
        """
        assert match.last_node.is_root or match.last_node.lock_ref > 0, (
            "load() needs the match locked"
        )
        todo: list[TreeNode] = []
        n = match.last_node
        while n is not match.last_device_node and n.parent is not None:
            todo.append(n)
            n = n.parent
        todo.reverse()
        for i, n in enumerate(todo):
            if n.host is None:
                todo = todo[:i]
                break
        need = sum(len(n.host) for n in todo)
        if need == 0:
            return 0
        self._make_room(DEVICE, need)
        pages = self.device_pool.allocator.alloc(need)
        self.controller.host_to_device([p for n in todo for p in n.host], pages, overlap=overlap)
        pos = 0
        for n in todo:
            n.device, pos = pages[pos : pos + len(n.host)], pos + len(n.host)
            n.parent.device_children += 1
            self._refresh(n)
            self._refresh(n.parent)
        return need * self.page_size

    def remote_status(self) -> dict | None:
        """The remote tier's health (None without one): its circuit breaker and the
        load-or-recompute estimate."""
        if self.store is None:
            return None
        return {
            "store": self.store.describe(),
            **self.controller.breaker.as_dict(),
            **self.cost.as_dict(),
        }

    def check_integrity(self) -> dict:
        """Prove every page is owned exactly once and the tree's invariants hold (a full scan)."""
        from radixkv.integrity import check_integrity

        return check_integrity(self)

    def close(self) -> None:
        """Finish in-flight remote writes and stop the I/O thread."""
        self.wait_idle()
        self.controller.close()

    def __enter__(self) -> HiRadixCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
