"""Replay a request trace through the real HiRadixCache and pools, one request at a time.

Each request does what the engine's scheduler will do: match, prefetch the remote part, lock,
load host hits to the device, allocate device pages for the rest, insert, unlock. Page payloads
are tiny (one layer, one head, head_dim 1) so the replay measures the cache, not memcpy.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from radixkv.bench.timed import CostModel, ServingClock
from radixkv.bench.tracefile import BLOCK, NextUseOracle, TraceRequest
from radixkv.config import CacheConfig
from radixkv.eviction import DEVICE, HOST, REMOTE, EvictionPolicy
from radixkv.hicache import HiRadixCache
from radixkv.namespace import CacheNamespace
from storage import FileStore, KVLayout, OutOfPages
from storage.codec import HEADER_FIXED_BYTES


class NextUsePolicy(EvictionPolicy):
    """Belady's offline policy: evict the node whose next read lies furthest in the future."""

    name = "offline-next-use"

    def __init__(self, oracle: NextUseOracle) -> None:
        self.oracle = oracle

    def priority(self, node) -> object:
        return -self.oracle.next_use(node.key[0])


@dataclass(frozen=True)
class ReplaySpec:
    page_size: int
    device_pages: int
    host_pages: int
    remote_pages: int
    policy: str
    write_policy: str = "write_through"

    def __post_init__(self) -> None:
        if self.page_size <= 0 or BLOCK % self.page_size:
            raise ValueError(
                f"--page-size must divide the trace's {BLOCK}-token blocks, got {self.page_size}"
            )


TIMED = ("match", "prefetch", "load", "alloc", "insert")


def replay(
    requests: list[TraceRequest],
    spec: ReplaySpec,
    *,
    oracle: NextUseOracle | None = None,
    progress: bool = True,
    check_every: int = 0,
    cost: CostModel | None = None,
) -> dict:
    """Run the trace; returns hit rates by tier, pages moved, evictions and per-op timings;
    with `cost`, also each request's modelled TTFT on a simulated clock (`timed`)."""
    layout = KVLayout(
        num_layers=1, num_kv_heads=1, head_dim=1, page_size=spec.page_size, dtype=torch.float16
    )
    remote_dir = tempfile.mkdtemp(prefix="radixkv-replay-") if spec.remote_pages else None
    store = None
    if remote_dir:
        blob_bytes = layout.page_bytes + HEADER_FIXED_BYTES + 4 * len(layout.page_shape)
        store = FileStore(remote_dir, capacity_bytes=spec.remote_pages * blob_bytes)
    config = CacheConfig(
        device_pages=spec.device_pages,
        host_pages=spec.host_pages,
        remote_pages=spec.remote_pages,
        policy="lru" if oracle else spec.policy,
        write_policy=spec.write_policy,
    )
    cache = HiRadixCache(
        layout,
        config,
        namespace=CacheNamespace("trace-replay", layout),
        store=store,
        device="cpu",
        policy_factory=(lambda: NextUsePolicy(oracle)) if oracle else None,
    )
    ps = spec.page_size
    hit = [0, 0, 0]
    total = skipped = 0
    timings = dict.fromkeys(TIMED, 0.0)
    clock = time.perf_counter
    served = ServingClock(cost) if cost is not None else None
    t_first = requests[0].timestamp_ms if requests else 0

    def arrival_s(req: TraceRequest) -> float:
        return (req.timestamp_ms - t_first) / 1e3 * cost.time_scale

    try:
        label = "offline bound" if oracle else spec.policy
        for i, req in enumerate(
            tqdm(
                requests, desc=f"replay {label}", unit="req", disable=not progress, mininterval=1.0
            )
        ):
            if oracle:
                oracle.now = i
            tokens = req.tokens()
            total += len(tokens)
            t0 = clock()
            m = cache.match(tokens)
            t1 = clock()
            fetched = 0
            if m.remote_tokens:
                ticket = cache.prefetch(tokens, discover=False)
                cache.wait_idle()
                fetched = ticket.fetched_tokens
                m = cache.match(tokens, touch=False)
            t2 = clock()
            mine = [m.device_tokens, m.host_tokens - fetched, fetched]
            for t in (DEVICE, HOST, REMOTE):
                hit[t] += mine[t]
            cache.lock(m.last_node)
            cache.load(m)
            t3 = clock()
            device_pages = cache.match(tokens, touch=False).device_pages
            try:
                new = cache.alloc(len(tokens) // ps - len(device_pages))
            except OutOfPages:  # longer than the device tier can hold at once: served uncached
                skipped += 1
                cache.unlock(m.last_node)
                if served is not None:
                    served.serve(arrival_s(req), len(tokens), [0, 0, 0])
                continue
            if served is not None:
                served.serve(arrival_s(req), len(tokens), mine)
            t4 = clock()
            cache.insert(tokens, device_pages + new)
            cache.unlock(m.last_node)
            cache.poll()
            t5 = clock()
            for name, dt in zip(TIMED, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
                timings[name] += dt
            if check_every and i % check_every == 0:
                cache.check_integrity()
        cache.wait_idle()
        integrity = cache.check_integrity()
    finally:
        cache.close()
        if remote_dir:
            shutil.rmtree(remote_dir, ignore_errors=True)
    n = len(requests)
    return {
        "policy": "offline-next-use" if oracle else spec.policy,
        "requests": n,
        "input_tokens": total,
        "token_hit_rate": sum(hit) / total,
        "hit_rate_by_tier": {
            "device": hit[DEVICE] / total,
            "host": hit[HOST] / total,
            "remote": hit[REMOTE] / total,
        },
        "pages_moved": dict(cache.controller.moved),
        "evictions": dict(
            zip(("device", "host", "remote"), cache.counters.evicted_pages, strict=True)
        ),
        "requests_too_long_for_device": skipped,
        "timings_us_per_request": {k: 1e6 * v / n for k, v in timings.items()},
        "replay_seconds": sum(timings.values()),
        "final_integrity": integrity,
        **(
            {"timed": served.report(arrival_s(requests[-1]) if requests else 0.0)}
            if served is not None
            else {}
        ),
    }


def capacities(
    unique: int, page_size: int, device_frac: float, host_frac: float, remote_frac: float
) -> tuple[int, int, int]:
    """Pages per tier from fractions of the trace's unique tokens (0 disables host/remote)."""
    for name, f in (
        ("--device-frac", device_frac),
        ("--host-frac", host_frac),
        ("--remote-frac", remote_frac),
    ):
        if not (0 <= f <= 10) or math.isnan(f):
            raise ValueError(f"{name} must be between 0 and 10, got {f}")
    if device_frac <= 0:
        raise ValueError("--device-frac must be > 0: requests run from device pages")
    return tuple(
        max(1, int(f * unique) // page_size) if f > 0 else 0
        for f in (device_frac, host_frac, remote_frac)
    )
