"""Cross-instance reuse: two `python -m radixkv.serve` processes share one remote tier.

Process B first serves a cold prompt (recomputed: its time to first token is the baseline, and it
gives B's load-or-recompute estimate a measured prefill speed). Process A then serves a shared
prompt of the same length and writes its pages through to the store. Process B gets the shared
prompt: a remote hit, prefetched into host while it waits, loaded instead of recomputed. One run
per store, loopback; figures are time to first token (a 1-token request through `/generate`).

python benchmarks/cross_instance.py [--stores file,redis,mooncake,s3] [--tokens 4096] \
    [--serve-args "--kv-memory-gb 1 --host-memory-gb 2"] [--json out.json]
Redis and the Mooncake master are started on loopback ports and stopped afterwards.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from radixkv.bench.local_server import local_server  # noqa: E402


def ttft(url: str, ids: list[int]) -> dict:
    """One 1-token request; the wall time and what the cache says it served."""
    t = time.perf_counter()
    r = httpx.post(
        url + "/generate",
        json={"input_ids": ids, "sampling_params": {"max_new_tokens": 1, "temperature": 0}},
        timeout=600,
    )
    r.raise_for_status()
    meta = r.json()["meta_info"]
    return {"ms": 1000 * (time.perf_counter() - t), "by_tier": meta["cached_tokens_by_tier"]}


def written_through(url: str, pages: int, timeout_s: float = 120) -> None:
    """Wait until the server has no remote write in flight and knows `pages` remote pages."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        s = httpx.get(url + "/cache/stats", timeout=60).json()
        if s["remote_inflight"] == 0 and s["pages"]["remote"]["known"] >= pages:
            return
        time.sleep(0.2)
    raise TimeoutError("the first server did not write its pages through in time")


def one_store(url: str, tokens: int, serve_args: str, seed: int) -> dict:
    rng = random.Random(seed)
    cold, shared = ([rng.randrange(100, 40000) for _ in range(tokens)] for _ in range(2))
    with local_server(serve_args, url) as a, local_server(serve_args, url) as b:
        ttft(b, [rng.randrange(100, 40000) for _ in range(64)])  # warm-up
        base = ttft(b, cold)
        first = ttft(a, shared)
        written_through(a, tokens // 16)
        hit = ttft(b, shared)
    return {"cold_on_b": base, "computed_on_a": first, "remote_hit_on_b": hit}


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--stores", default="file,redis,mooncake,s3")
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--serve-args", default="--kv-memory-gb 1 --host-memory-gb 2")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    from tests.store_servers import loopback_store

    rows = {}
    with tempfile.TemporaryDirectory(prefix="radixkv-cross-") as tmp:
        for name in args.stores.split(","):
            with loopback_store(name, Path(tmp)) as url:
                print(f"{name}: two servers on {url}", file=sys.stderr)
                rows[name] = one_store(url, args.tokens, args.serve_args, args.seed)
    print(f"{args.tokens}-token prompt, time to first token (ms), server args: {args.serve_args}")
    print(
        f"{'store':<10}{'cold on B':>11}{'first on A':>12}{'hit on B':>10}{'speed-up':>10}  B's hit"
    )
    for name, r in rows.items():
        cold, hit = r["cold_on_b"]["ms"], r["remote_hit_on_b"]["ms"]
        print(
            f"{name:<10}{cold:>11,.0f}{r['computed_on_a']['ms']:>12,.0f}{hit:>10,.0f}"
            f"{cold / hit:>9.1f}x  {r['remote_hit_on_b']['by_tier']}"
        )
    if args.json:
        args.json.write_text(json.dumps({"tokens": args.tokens, "stores": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
