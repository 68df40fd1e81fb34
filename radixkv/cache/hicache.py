"""HiRadixCache: the hierarchical radix cache over device, host and remote tiers.

This is the control plane and the single owner of every page: it decides residency, and it
alone allocates and frees pool pages. A page index in a pool is at every moment exactly one of
  free | owned by one tree node | owned by one running request (device) | reserved for a remote
  read in flight (host)
and `check_integrity()` proves it.

Residency: device residency is prefix-closed; a node stays while any tier holds it or it has
children; the host tier is inclusive, so make it larger (docs/architecture.md, "Residency rules").

Use: match -> lock -> load (prefetch first for a remote part) -> alloc -> compute -> insert ->
unlock. The serving engine goes through `radixkv.cache.prefix_cache.PrefixCache` instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from radixkv.cache.config import CacheConfig
from radixkv.cache.cost_model import LoadCostModel
from radixkv.cache.data_plane import DataPlane
from radixkv.cache.eviction.by_name import make_policy
from radixkv.cache.eviction.evictor import Evictor
from radixkv.cache.eviction.policy import EvictionPolicy
from radixkv.cache.integrity import check_integrity
from radixkv.cache.namespace import CacheNamespace
from radixkv.cache.prefetch.prefetcher import Prefetcher
from radixkv.cache.prefetch.remote_reads import Prefetch, RemoteReads
from radixkv.cache.promotion import load_host_part
from radixkv.cache.remote_admission import PENDING
from radixkv.cache.tiers import DEVICE, HOST, REMOTE
from radixkv.cache.tree import RadixTree, TreeNode
from radixkv.cache.types import CacheCounters, MatchResult
from radixkv.cache.writes import TierWrites
from storage import DevicePool, HostPool, KVLayout, RemoteStore, open_remote_tier


class HiRadixCache:
    """The hierarchical cache. Its helpers (`evictor`, `writes`, `reads`, `prefetcher`; see
    the package's doc) act on it through the `radixkv.cache.owner.PageOwner` protocol."""

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
            store = open_remote_tier(remote_url)
        if config.has_remote_tier and store is None:
            raise ValueError("remote_pages > 0 needs a remote store (store= or remote_url=)")
        if store is not None and not config.has_remote_tier:
            raise ValueError("a remote store was given but CacheConfig.remote_pages is 0")
        self.layout = layout
        self.config = config
        self.namespace = namespace or CacheNamespace("unnamed-model", layout)
        if self.namespace.layout != layout:
            raise ValueError("the namespace was made for a different KV layout")
        self.tree = RadixTree(layout.page_size, on_split=self._on_split)
        self.device_pool = DevicePool(layout, config.device_pages, device)
        self.host_pool = HostPool(layout, config.host_pages)
        self.store = store
        self.controller = DataPlane(
            self.device_pool,
            self.host_pool,
            self.store,
            self.namespace.digest,
            config.remote_timeout_s,
            inline=config.remote_io == "inline",
            auth=self.namespace.auth,
        )
        factory = policy_factory or (lambda: make_policy(config.policy))
        self.evictor = Evictor(self, factory)
        self.request_pages: set[int] = set()  # device pages owned by running requests
        self.locked_device_pages = 0  # device pages of nodes running requests lock (kept exact)
        self.remote_pages_known = 0
        self.clock = 0
        self.counters = CacheCounters()
        self.cost = LoadCostModel(margin=config.remote_load_margin)
        self.controller.read_observer = lambda nbytes, secs: self.cost.observe_remote_read(
            nbytes, secs, small_bytes=layout.page_bytes
        )
        self.writes = TierWrites(self)
        self.reads = RemoteReads(self)
        self.prefetcher = Prefetcher(self, config.prefetch)
        # told of every run of pages arriving on or leaving the device or host tier (KV events)
        self.on_residency: Callable[[TreeNode, int, bool], None] | None = None

    def residency_changed(self, node: TreeNode, tier: int, stored: bool) -> None:
        """`node`'s pages arrived on (`stored`) or left `tier`: tell the listener, if any."""
        if self.on_residency is not None:
            self.on_residency(node, tier, stored)

    @property
    def page_size(self) -> int:
        """Tokens per page: the layout's."""
        return self.layout.page_size

    # ---- queries ---------------------------------------------------------------------------
    def match(self, tokens: Sequence[int], *, touch: bool = True) -> MatchResult:
        """The cached prefix of `tokens` by tier; `touch` counts it as a hit for the policies
        (and advances the logical clock; a peek with touch=False changes no statistics)."""
        if touch:
            self.clock += 1
            self.evictor.observe(tokens)
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
                if node.prefetch_mark:
                    self.prefetcher.on_read(node)
                if node.admit_fate == PENDING:  # written through, read again
                    self.writes.admission.on_read(node, self.clock)
                self.refresh(node)
                if node is last:
                    break
            if self.writes.selective:
                for node in path[: path.index(last) + 1] if last is not root else ():
                    self.writes.apply(node)
        return MatchResult(device_pages, lens[DEVICE], lens[HOST], lens[REMOTE], last_device, last)

    # ---- references --------------------------------------------------------------------------
    def lock(self, node: TreeNode) -> None:
        """Protect `node` and its ancestors from eviction on every tier (a running request)."""
        self._acquire(node, "lock_ref")

    def unlock(self, node: TreeNode) -> None:
        self._release(node, "lock_ref")

    def pin(self, node: TreeNode) -> None:
        """Like a lock, for a copy in flight that reads or writes the path's pages."""
        self._acquire(node, "io_ref")

    def unpin(self, node: TreeNode) -> None:
        """Undo one `pin`."""
        self._release(node, "io_ref")

    def _acquire(self, node: TreeNode, ref: str) -> None:
        for n in node.path_to_root():
            if ref == "lock_ref" and n.device is not None and n.lock_ref == 0:
                self.locked_device_pages += len(n.device)
            count = getattr(n, ref) + 1
            setattr(n, ref, count)
            if count == 1:
                self.refresh(n)

    def _release(self, node: TreeNode, ref: str) -> None:
        orphan = None  # the highest node left with no residency (a remote read failed under it)
        for n in node.path_to_root():
            count = getattr(n, ref) - 1
            assert count >= 0, f"{ref} released more often than taken"
            setattr(n, ref, count)
            if count == 0:
                self.refresh(n)
            if ref == "lock_ref" and n.device is not None and n.lock_ref == 0:
                self.locked_device_pages -= len(n.device)
            if n.lock_ref == 0 and n.io_ref == 0 and not n.resident_anywhere():
                orphan = n
        if orphan is not None:
            self.drop(orphan)

    def _on_split(self, upper: TreeNode, lower: TreeNode) -> None:
        for n in (upper, lower):  # lower's key starts elsewhere: key-aware priorities change
            self.refresh(n)

    def refresh(self, node: TreeNode) -> None:
        """Tell the eviction indexes that `node`'s residency, references or stats changed."""
        self.evictor.refresh(node)  # re-rank it in every tier's eviction index

    # ---- request pages -----------------------------------------------------------------------
    def alloc(self, num_pages: int) -> list[int]:
        """Device pages for a request's new tokens, evicting as needed; raises OutOfPages.

        The request owns them until it passes them to `insert` or gives them back with `free`.
        """
        self.make_room(DEVICE, num_pages)
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
                self.residency_changed(node, DEVICE, True)
                node.parent.device_children += 1
                adopted.append(node)
                if node.lock_ref:
                    self.locked_device_pages += len(given)
            node.last_access = self.clock
            pos += len(node.key)
        if pos < n_tokens:
            given = list(pages[pos // ps :])
            self._take_request_pages(given)
            node = self.tree.add_child(node, tokens[pos:])
            node.device = given
            self.residency_changed(node, DEVICE, True)
            node.parent.device_children += 1
            node.last_access = self.clock
            adopted.append(node)
        if duplicates:
            self.free(duplicates)
            self.counters.duplicate_pages += len(duplicates)
        for n in adopted:
            self.counters.inserted_pages += len(n.device)
            self.refresh(n)
            self.refresh(n.parent)
            self.writes.apply(n)
        return node

    def _take_request_pages(self, pages: list[int]) -> None:
        for p in pages:
            assert p in self.request_pages, f"device page {p} is not owned by a request"
        self.request_pages.difference_update(pages)

    def page_keys(self, node: TreeNode) -> list[bytes]:
        """The chained remote keys of a node's pages (computed once, cached on the node)."""
        if node.page_keys is None:
            parent = node.parent
            prev = None if parent is None or parent.is_root else self.page_keys(parent)[-1]
            node.page_keys = self.namespace.page_keys(
                prev, node.key, len(node.key) // self.page_size
            )
        return node.page_keys

    def set_remote(self, node: TreeNode, on: bool) -> None:
        """Record whether the remote tier holds `node`'s pages (a write acknowledged, a read
        that found them missing); keeps the remote tier within its tracked pages."""
        if node.remote != on:
            node.remote = on
            self.remote_pages_known += (1 if on else -1) * (len(node.key) // self.page_size)
            self.refresh(node)
            if on:
                self.make_room(REMOTE, 0)

    # ---- eviction (`radixkv.cache.eviction.evictor`) ---------------------------------------------
    def make_room(self, tier: int, num_pages: int) -> None:
        """Evict until `num_pages` of `tier` are free; raises OutOfPages if it cannot."""
        self.evictor.make_room(tier, num_pages)

    def evict(self, tier: int, num_pages: int) -> int:
        """Free at least `num_pages` of a tier by eviction if possible; returns pages freed."""
        return self.evictor.evict(tier, num_pages)

    def drop(self, node: TreeNode) -> None:
        """Remove a node no tier holds, with any subtree (unreachable without this prefix)."""
        self.evictor.drop(node)

    # ---- promotion (`radixkv.cache.promotion`) ---------------------------------------------------
    def load(self, match: MatchResult, *, overlap: bool = False) -> int:
        """Copy the host-resident part of a locked match to the device; returns tokens loaded."""
        return load_host_part(self, match, overlap=overlap)

    def join_prefetch_loads(self) -> None:
        """The current stream waits for the prefetcher's deferred host -> device copies (a
        stream wait, not a CPU sync): due before a forward reads any page they filled."""
        self.controller.join_deferred()

    # ---- remote reads (`radixkv.cache.prefetch.remote_reads`) ------------------------------------
    def prefetch(self, tokens: Sequence[int], **options: bool) -> Prefetch:
        """Start bringing the remote part of `tokens`' cached prefix to host (`discover`, `hold`:
        see `RemoteReads.prefetch`)."""
        return self.reads.prefetch(tokens, **options)

    def release_prefetch(self, ticket: Prefetch | None) -> None:
        self.reads.release_prefetch(ticket)

    def poll(self) -> int:
        return self.reads.poll()  # finished remote operations applied to the tree; never blocks

    def wait_one(self, timeout_s: float | None = None) -> None:
        self.reads.wait_one(timeout_s)

    def wait_idle(self, timeout_s: float | None = None) -> None:
        self.reads.wait_idle(timeout_s)

    def flush(self) -> int:
        """Drop every cached page not held by a running request; returns nodes dropped.

        Remote entries stay in the store (other processes may use them); the tree forgets them.
        """
        self.wait_idle()
        return self.evictor.drop_unheld()

    @property
    def io_pending(self) -> bool:
        """Whether any remote operation is in flight."""
        return self.controller.inflight > 0

    def wake(self) -> None:
        """Return a `wait_one` early (from any thread)."""
        self.controller.wake()

    def take_layer_events(self) -> list | None:
        """Per-layer CUDA events of loads the next forward must wait for (once)."""
        return self.controller.take_layer_events()

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        """A prefill step's speed, for the load-or-recompute estimate."""
        self.cost.observe_prefill(tokens, seconds)

    def remote_wait_s(self, uncached_tokens: int) -> float:
        """How long a queued request waits for its remote fetch: recomputing `uncached_tokens`'
        time over the load margin; the remote timeout before a speed is measured, or margin 0."""
        config = self.config
        recompute = self.cost.recompute_seconds(uncached_tokens)
        if recompute is None or config.remote_load_margin <= 0:
            return config.remote_timeout_s
        return min(config.remote_timeout_s, recompute / config.remote_load_margin)

    def remote_status(self) -> dict | None:
        """The remote tier's health (None without one): breaker and load-or-recompute estimate."""
        if self.store is None:
            return None
        breaker, cost = self.controller.breaker.as_dict(), self.cost.as_dict()
        return {"store": self.store.describe(), **breaker, **cost}

    def check_integrity(self) -> dict:
        """Prove every page is owned exactly once and the tree's invariants hold (a full scan)."""
        return check_integrity(self)

    def close(self) -> None:
        """Finish in-flight remote writes and stop the I/O thread."""
        self.wait_idle()
        self.controller.close()

    def __enter__(self) -> HiRadixCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
