"""Remote store throughput: batched put / exists / get per page, on loopback or local disk.

python benchmarks/store_throughput.py [--url file:///tmp/radixkv-bench] [--pages 400] [--size 262144] [--batch 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time

from storage import open_store


async def measure(url: str, pages: int, size: int, batch: int) -> None:
    store = open_store(url)
    items = [(f"{i:032x}", os.urandom(size)) for i in range(pages)]
    keys = [k for k, _ in items]
    results = {}
    for name, op, arg in (
        ("put", store.put, items),
        ("exists", store.exists, keys),
        ("get", store.get, keys),
    ):
        t = time.perf_counter()
        for i in range(0, pages, batch):
            await op(arg[i : i + batch])
        results[name] = time.perf_counter() - t
    await store.delete(keys)
    await store.close()
    print(f"{store.describe()}: {pages} pages of {size:,} B in batches of {batch}")
    for name, dt in results.items():
        rate = "" if name == "exists" else f"  {pages * size / dt / 1e9:6.2f} GB/s"
        print(f"  {name:<7}{1e6 * dt / pages:8.0f} us/page{rate}")


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", default=None, help="store URL (default: a fresh temporary file store)")
    p.add_argument("--pages", type=int, default=400)
    p.add_argument("--size", type=int, default=256 * 1024)
    p.add_argument("--batch", type=int, default=32)
    args = p.parse_args()
    tmp = None
    if args.url is None:
        tmp = tempfile.mkdtemp(prefix="radixkv-store-bench-")
        args.url = f"file://{tmp}"
    try:
        asyncio.run(measure(args.url, args.pages, args.size, args.batch))
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
