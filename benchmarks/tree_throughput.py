"""Cache-core speed: request throughput and eviction cost as the evictable leaves grow.

1. 10,000 requests of 2,048 tokens sharing 64 prefixes of 1,536 tokens (page size 16, a device
   pool of 1,048,576 tokens): requests per second through match -> alloc (evicts) -> insert.
2. Eviction time per page with 10k, 100k and 1M evictable leaves (it must grow like log n).

Both are run with radixkv's indexed eviction and, side by side, with the scan-and-heapify
eviction SGLang's radix cache uses (collect every evictable leaf, heapify, pop) as a baseline.

    python benchmarks/tree_throughput.py [--requests 10000] [--leaves 10000,100000,1000000]
"""

from __future__ import annotations

import argparse
import gc
import heapq
import math
import random
import sys
import time

import torch

from radixkv import DEVICE, CacheConfig, HiRadixCache
from radixkv.cache.eviction.by_name import make_policy
from radixkv.cache.eviction.evictor import Evictor
from radixkv.cache.eviction.index import device_evictable
from storage import KVLayout, OutOfPages

PS = 16
LAYOUT = KVLayout(num_layers=1, num_kv_heads=1, head_dim=1, page_size=PS, dtype=torch.float16)


class ScanEvictor(Evictor):
    """Baseline: each eviction call scans all nodes for evictable leaves and heapifies them."""

    def make_room(self, tier: int, num_pages: int) -> None:
        assert tier == DEVICE
        pool = self.cache.device_pool
        if pool.allocator.num_free >= num_pages:
            return
        policy = self.indexes[DEVICE].policy
        nodes = self.cache.tree.nodes()
        heap = [(policy.priority(n), id(n), n) for n in nodes if device_evictable(n)]
        heapq.heapify(heap)
        while pool.allocator.num_free < num_pages:
            if not heap:
                raise OutOfPages("nothing evictable")
            _, _, node = heapq.heappop(heap)
            self.indexes[DEVICE].discard(node)
            parent = node.parent
            self.evict_device(node)
            if parent is not None and parent.parent is not None and device_evictable(parent):
                heapq.heappush(heap, (policy.priority(parent), id(parent), parent))


class ScanEvictionCache(HiRadixCache):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.evictor = ScanEvictor(self, lambda: make_policy(self.config.policy))


def make_cache(cls, device_tokens: int) -> HiRadixCache:
    return cls(LAYOUT, CacheConfig(device_pages=device_tokens // PS, policy="lru"), device="cpu")


def serve(cache: HiRadixCache, tokens: tuple[int, ...]) -> None:
    m = cache.match(tokens)
    cache.lock(m.last_node)
    new = cache.alloc(len(tokens) // PS - len(m.device_pages))
    cache.insert(tokens, m.device_pages + new)
    cache.unlock(m.last_node)


def throughput(cls, n_requests: int, seed: int = 0) -> tuple[float, int]:
    rng = random.Random(seed)
    prefixes = [tuple(rng.randrange(32000) for _ in range(1536)) for _ in range(64)]
    requests = [
        prefixes[rng.randrange(64)] + tuple(rng.randrange(32000) for _ in range(512))
        for _ in range(n_requests)
    ]
    cache = make_cache(cls, 1 << 20)
    gc.collect()
    t = time.perf_counter()
    for tokens in requests:
        serve(cache, tokens)
    elapsed = time.perf_counter() - t
    cache.check_integrity()
    return n_requests / elapsed, cache.counters.evicted_pages[DEVICE]


def build_leaves(cls, n_leaves: int, seed: int = 0) -> HiRadixCache:
    """n one-page leaves under 256 shared four-page prefixes, all evictable."""
    rng = random.Random(seed)
    cache = make_cache(cls, (n_leaves + 256 * 4 + 1024) * PS)
    prefixes = [tuple(rng.randrange(32000) for _ in range(4 * PS)) for _ in range(256)]
    for i in range(n_leaves):
        tokens = prefixes[i % 256] + (i,) + tuple(rng.randrange(32000) for _ in range(PS - 1))
        serve(cache, tokens)
    return cache


def eviction_cost(cls, n_leaves: int, evictions: int) -> float:
    """Microseconds per evicted page, for `evictions` single-page evictions."""
    cache = build_leaves(cls, n_leaves)
    gc.collect()
    t = time.perf_counter()
    for _ in range(evictions):
        cache.evict(DEVICE, 1)
    us = 1e6 * (time.perf_counter() - t) / evictions
    assert cache.counters.evicted_pages[DEVICE] == evictions
    return us


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--leaves", default="10000,100000,1000000")
    p.add_argument(
        "--baseline-max-leaves",
        type=int,
        default=100_000,
        help="the scan baseline is O(n) per call",
    )
    args = p.parse_args()

    print(
        "1) 10k requests x 2,048 tokens, 64 shared 1,536-token prefixes, page 16, device 1,048,576 tokens"
    )
    rps, evicted = throughput(HiRadixCache, args.requests)
    rps_scan, _ = throughput(ScanEvictionCache, args.requests)
    print(f"   radixkv (indexed eviction): {rps:>9,.0f} req/s   ({evicted:,} pages evicted)")
    print(f"   scan-and-heapify baseline:  {rps_scan:>9,.0f} req/s   -> {rps / rps_scan:.2f}x")

    print("2) eviction time per page vs evictable leaves (5,000 single-page evictions each)")
    print(
        f"   {'leaves':>10} {'radixkv us/page':>16} {'growth':>7} {'log n growth':>13} {'scan baseline us/page':>22}"
    )
    first = None
    for n in (int(x) for x in args.leaves.split(",")):
        ours = eviction_cost(HiRadixCache, n, evictions=5000)
        baseline = n <= args.baseline_max_leaves
        scan = eviction_cost(ScanEvictionCache, n, evictions=20) if baseline else float("nan")
        first = first or (n, ours)
        log_growth = math.log2(n) / math.log2(first[0])
        print(
            f"   {n:>10,} {ours:>16.2f} {ours / first[1]:>6.2f}x {log_growth:>12.2f}x {scan:>22.1f}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
