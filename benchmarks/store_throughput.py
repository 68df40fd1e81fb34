"""Remote tiers side by side on loopback: file, Redis and Mooncake Store, in one run.

1. Batch put / exists / get of 256 KiB pages (GB/s); one client writes, another reads.
2. A remote hit end to end: a second cache (a fresh tree, as in another engine process) gets a
   request for a 4,096-token prefix another cache wrote through; the time from its arrival to
   the whole prefix being verified on its host tier (discovery by key, fetch, checks, copy in).

python benchmarks/store_throughput.py [--stores file,redis,mooncake,s3] [--pages 400] [--batch 32]
Redis and the Mooncake master are started on loopback ports and stopped afterwards. With
`--url URL` (repeatable) it measures stores you run instead (it writes and deletes its own keys).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from radixkv import CacheConfig, CacheNamespace, HiRadixCache
from storage import KVLayout, open_store

# SmolLM2-135M's KV shape in bf16: 30 layers x 3 KV heads x 64, page 16 -> 368,640 B per page
LAYOUT = KVLayout(num_layers=30, num_kv_heads=3, head_dim=64, page_size=16, dtype=torch.bfloat16)
PREFIX_TOKENS = 4096


async def throughput(url: str, pages: int, size: int, batch: int) -> dict:
    # a second client reads, as another engine process would: a Mooncake client reading its own
    # segment copies memory and would overstate what a remote hit gets
    store, reader = open_store(url), open_store(url)
    items = [(f"{os.getpid():08x}{i:024x}", os.urandom(size)) for i in range(pages)]
    keys = [k for k, _ in items]
    out = {"store": store.describe()}
    for name, op, arg in (
        ("put", store.put, items),
        ("exists", reader.exists, keys),
        ("get", reader.get, keys),
    ):
        t = time.perf_counter()
        for i in range(0, pages, batch):
            await op(arg[i : i + batch])
        dt = time.perf_counter() - t
        out[name] = {
            "us_per_page": 1e6 * dt / pages,
            "GB_per_s": None if name == "exists" else pages * size / dt / 1e9,
        }
    await store.delete(keys)
    await reader.close()
    await store.close()
    return out


def remote_hit_ms(url: str, repeats: int = 3) -> list[float]:
    """Arrival -> 4,096-token prefix on host, for a fresh cache reading what another wrote."""
    ns = CacheNamespace(f"bench-{os.getpid()}-{time.time_ns()}", LAYOUT)
    n = PREFIX_TOKENS // LAYOUT.page_size
    config = CacheConfig(
        device_pages=n + 8, host_pages=2 * n, remote_pages=4 * n, remote_timeout_s=60
    )
    tokens = [(i * 7919) % 50000 for i in range(PREFIX_TOKENS)]
    writer = HiRadixCache(LAYOUT, config, namespace=ns, remote_url=url)
    times = []
    try:
        pages = writer.alloc(n)
        writer.device_pool.data[:, pages] = torch.randn(writer.device_pool.data[:, pages].shape).to(
            LAYOUT.dtype
        )
        writer.insert(tokens, pages)
        writer.wait_idle(timeout_s=120)
        assert writer.counters.remote_write_failures == 0, "the writer could not store its pages"
        for _ in range(repeats):
            reader = HiRadixCache(LAYOUT, config, namespace=ns, remote_url=url)
            try:
                t0 = time.perf_counter()
                ticket = reader.prefetch(tokens)
                while not ticket.done:
                    reader.wait_one()
                times.append(1000 * (time.perf_counter() - t0))
                assert reader.match(tokens).host_tokens == PREFIX_TOKENS, "not all of it arrived"
            finally:
                reader.close()
    finally:
        writer.close()
    return times


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stores", default="file,redis,mooncake,s3")
    p.add_argument("--pages", type=int, default=400)
    p.add_argument("--size", type=int, default=256 * 1024)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--url", action="append", default=[], help="measure this store instead")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.store_servers import loopback_store

    rows = []
    with tempfile.TemporaryDirectory(prefix="radixkv-store-bench-") as tmp:
        for url in args.url:
            rows.append(
                (
                    url.split("://")[0],
                    asyncio.run(throughput(url, args.pages, args.size, args.batch)),
                    remote_hit_ms(url),
                )
            )
        for name in [] if args.url else args.stores.split(","):
            with loopback_store(name, Path(tmp)) as url:
                t = asyncio.run(throughput(url, args.pages, args.size, args.batch))
                rows.append((name, t, remote_hit_ms(url)))
    mb = PREFIX_TOKENS // LAYOUT.page_size * LAYOUT.page_bytes / 1e6
    print(
        f"{args.pages} pages of {args.size:,} B in batches of {args.batch}; remote hit: "
        f"{PREFIX_TOKENS} tokens = {mb:.0f} MB ({LAYOUT.page_bytes:,} B pages), median of 3"
    )
    print(
        f"{'store':<10}{'put GB/s':>10}{'get GB/s':>10}{'exists us/page':>16}{'hit -> host ms':>16}{'GB/s':>7}"
    )
    for name, t, hits in rows:
        med = statistics.median(hits)
        print(
            f"{name:<10}{t['put']['GB_per_s']:>10.2f}{t['get']['GB_per_s']:>10.2f}"
            f"{t['exists']['us_per_page']:>16.0f}{med:>16.1f}{mb / med:>7.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
