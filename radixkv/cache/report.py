"""The cache's state in one dict: pages by tier, hit rates, counters, traffic, remote health
(what `/cache/stats` and `/metrics` show)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner

TIERS = ("device", "host", "remote")


def cache_report(cache: PageOwner, *, integrity: bool = False) -> dict:
    """Counters, pools, remote traffic; with `integrity` the full ownership check too (a scan)."""
    c = cache.counters
    queried = max(c.tokens_queried, 1)
    report = {
        "page_size": cache.page_size,
        "pages": {
            "device": {
                "capacity": cache.device_pool.num_pages,
                "free": cache.device_pool.allocator.num_free,
            },
            "host": {
                "capacity": cache.host_pool.num_pages,
                "free": cache.host_pool.allocator.num_free,
            },
            "remote": {"known": cache.remote_pages_known, "budget": cache.config.remote_pages},
        },
        "token_hit_rate": sum(c.tokens_hit) / queried,
        "hit_rate_by_tier": dict(zip(TIERS, (h / queried for h in c.tokens_hit), strict=True)),
        "counters": {
            "matches": c.matches,
            "tokens_queried": c.tokens_queried,
            "tokens_hit": dict(zip(TIERS, c.tokens_hit, strict=True)),
            "evicted_pages": dict(zip(TIERS, c.evicted_pages, strict=True)),
            "inserted_pages": c.inserted_pages,
            "remote_write_failures": c.remote_write_failures,
            "remote_writes_shed": c.remote_writes_shed,
        },
        "pages_moved": dict(cache.controller.moved),
        "remote_inflight": cache.controller.inflight,
        "remote_write_backlog_pages": cache.controller.write_pages_inflight,
        "remote": None
        if cache.store is None
        else {**cache.remote_status(), "traffic": cache.store.stats.as_dict()},
        "tree_nodes": cache.tree.num_nodes,
        "prefetch": cache.prefetcher.report(sum(c.tokens_hit)),
    }
    if integrity:
        report["integrity"] = cache.check_integrity()
    return report
