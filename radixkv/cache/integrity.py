"""check_integrity(): a full proof of the cache's ownership and tree invariants.

Per tier: free + evictable + locked = capacity, where every page index is counted exactly once:
free in the allocator, owned by one tree node (evictable if the node is unlocked, locked if a
request or a copy in flight holds it), owned by one running request, or reserved for a remote
read in flight. Also: keys are page-aligned, device residency is prefix-closed, every node is
resident somewhere (or held, awaiting its recompute), counters kept incrementally match a
recount, and each eviction index holds exactly the nodes its tier may evict.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixkv.cache.eviction.index import EVICTABLE
from radixkv.cache.tiers import TIER_NAMES

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner


class IntegrityError(AssertionError):
    """The cache broke one of its invariants: a bug, never a user error."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise IntegrityError(msg)


def check_integrity(cache: PageOwner) -> dict:
    ps = cache.page_size
    tree = cache.tree
    owner: list[dict[int, str]] = [{}, {}]  # device, host: page -> owner description
    held = [0, 0]  # pages of referenced (locked or pinned) nodes
    locked_device = 0  # device pages of nodes a request locks
    unheld = [0, 0]
    remote_pages = 0
    evictable_nodes = [0, 0, 0]
    queued_tokens = [[0] * len(index.sizes) for index in cache.evictor.indexes]
    num_nodes = 1

    def own(tier: int, pages: list[int], who: str) -> None:
        for p in pages:
            _require(
                p not in owner[tier],
                f"{TIER_NAMES[tier]} page {p} owned by {owner[tier].get(p)} and {who}",
            )
            owner[tier][p] = who

    for node in tree.nodes():
        num_nodes += 1
        if node.lock_ref and node.device is not None:
            locked_device += len(node.device)
        who = f"node@{node.depth}"
        k = len(node.key) // ps
        _require(
            len(node.key) > 0 and len(node.key) % ps == 0, f"{who}: key of {len(node.key)} tokens"
        )
        _require(
            node.parent is not None and node.parent.children.get(node.key[:ps]) is node,
            f"{who}: parent link",
        )
        _require(node.depth == node.parent.depth + len(node.key), f"{who}: depth")
        _require(
            node.resident_anywhere() or node.lock_ref > 0 or node.io_ref > 0,
            f"{who}: resident nowhere",
        )
        _require(
            node.lock_ref >= sum(c.lock_ref for c in node.children.values()),
            f"{who}: lock_ref below children's",
        )
        _require(
            node.io_ref >= sum(c.io_ref for c in node.children.values()),
            f"{who}: io_ref below children's",
        )
        _require(
            node.device_children == sum(c.device is not None for c in node.children.values()),
            f"{who}: device_children count",
        )
        referenced = node.lock_ref > 0 or node.io_ref > 0
        for tier, pages in ((0, node.device), (1, node.host)):
            if pages is not None:
                _require(len(pages) == k, f"{who}: {len(pages)} {TIER_NAMES[tier]} pages for {k}")
                own(tier, pages, who)
                (held if referenced else unheld)[tier] += k
        if node.device is not None:
            _require(
                node.parent.is_root or node.parent.device is not None,
                f"{who}: device residency not prefix-closed",
            )
        if node.remote:
            remote_pages += k
        if node.page_keys is not None:
            _require(
                len(node.page_keys) == k, f"{who}: {len(node.page_keys)} page keys for {k} pages"
            )
        for t, evictable in enumerate(EVICTABLE):
            indexed = node.heap_token[t] is not None
            _require(
                indexed == evictable(node),
                f"{who}: {TIER_NAMES[t]} index says {indexed}, rule says {not indexed}",
            )
            evictable_nodes[t] += indexed
            if indexed:
                queue, _, tokens = node.heap_prio[t]
                _require(tokens == len(node.key), f"{who}: filed with {tokens} tokens")
                queued_tokens[t][queue] += tokens

    _require(num_nodes == tree.num_nodes, f"tree counts {tree.num_nodes} nodes, found {num_nodes}")
    _require(
        remote_pages == cache.remote_pages_known,
        f"remote pages {remote_pages} != counter {cache.remote_pages_known}",
    )
    for t in range(3):
        _require(
            cache.evictor.indexes[t].live == evictable_nodes[t],
            f"{TIER_NAMES[t]} index live count off",
        )
        _require(
            cache.evictor.indexes[t].sizes == queued_tokens[t],
            f"{TIER_NAMES[t]} index tokens per queue {cache.evictor.indexes[t].sizes}, "
            f"found {queued_tokens[t]}",
        )
    _require(
        locked_device == cache.locked_device_pages,
        f"device pages of locked nodes: {locked_device}, counter {cache.locked_device_pages}",
    )
    own(0, sorted(cache.request_pages), "a request")
    own(1, sorted(cache.reads.reserved_host), "a remote read in flight")

    report = {}
    for tier, pool, extra in (
        (0, cache.device_pool, len(cache.request_pages)),
        (1, cache.host_pool, len(cache.reads.reserved_host)),
    ):
        pool.allocator.check()
        free = pool.allocator.free_set()
        for p in free:
            _require(
                p not in owner[tier],
                f"{TIER_NAMES[tier]} page {p} is free and owned by {owner[tier].get(p)}",
            )
        _require(
            len(free) + len(owner[tier]) == pool.num_pages,
            f"{TIER_NAMES[tier]}: {len(free)} free + {len(owner[tier])} owned != capacity {pool.num_pages}",
        )
        report[TIER_NAMES[tier]] = {
            "capacity": pool.num_pages,
            "free": len(free),
            "evictable": unheld[tier],
            "locked": held[tier] + extra,
            "request_or_inflight": extra,
        }
    report["remote"] = {"known_pages": remote_pages, "budget": cache.config.remote_pages}
    report["nodes"] = num_nodes
    return report
