"""Replay a request trace through the real HiRadixCache and pools, one request at a time.

Each request does what the engine's scheduler will do: match, prefetch the remote part, lock,
load host hits to the device, allocate device pages for the rest, insert, unlock. Page payloads
are tiny (one layer, one head, head_dim 1) so the replay measures the cache, not memcpy.
"""

from __future__ import annotations

import heapq
import math
import os
import secrets
import shutil
import tempfile
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

from radixkv.bench.timed import CostModel, ServingClock
from radixkv.bench.tracefile import BLOCK, NextUseOracle, TraceRequest
from radixkv.cache.config import CacheConfig
from radixkv.cache.eviction.policy import EvictionPolicy
from radixkv.cache.hicache import HiRadixCache
from radixkv.cache.namespace import CacheNamespace
from radixkv.cache.tiers import DEVICE, HOST, REMOTE
from storage import FileStore, KVLayout, OutOfPages, open_store
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
    remote_url: str | None = None  # a store for the remote tier; default: a fresh file store
    remote_admission: float = 0.0  # CacheConfig.remote_admission
    # the engine caches a prompt's computed pages after every prefill chunk of this many new
    # tokens (its max_batch_tokens), so a long prompt is a chain of nodes whose tail is evicted
    # before its head; 0: each prompt inserted whole, one node
    prefill_chunk: int = 0

    def __post_init__(self) -> None:
        if self.prefill_chunk < 0:
            raise ValueError(
                f"prefill-chunk (`trace --max-batch-tokens`) must be >= 0, got {self.prefill_chunk}"
            )
        if self.page_size <= 0 or BLOCK % self.page_size:
            raise ValueError(
                f"--page-size must divide the trace's {BLOCK}-token blocks, got {self.page_size}"
            )


TIMED = ("match", "prefetch", "load", "alloc", "insert")


class SessionGuess:
    """Which earlier request a trace request continues (the trace names no sessions).

    A conversation's next turn resends its whole prompt but the last block, which the new turn
    fills further: request j continues the session of the latest request whose prompt minus its
    last block is a prefix of j's. Block ids are chained (an id always has the same parent), so
    that prefix is named by its last id.
    """

    def __init__(self) -> None:
        self._open: dict[int, int] = {}  # last block id of a context -> its session

    def arrive(self, index: int, req: TraceRequest) -> tuple[int, bool]:
        """(session id, whether it continues one) for request `index`; the id is the index of
        the session's first request."""
        h = req.hash_ids
        for k in range(len(h) - 1, 1, -1):
            session = self._open.get(h[k - 1])
            if session is not None:
                return session, True
        return index, False

    def context(self, session: int, req: TraceRequest) -> int:
        """Record `req`'s context for its session; returns its length in tokens."""
        if len(req.hash_ids) < 2:
            return 0
        self._open[req.hash_ids[-2]] = session
        return BLOCK * (len(req.hash_ids) - 1)


def replay(
    requests: list[TraceRequest],
    spec: ReplaySpec,
    *,
    oracle: NextUseOracle | None = None,
    progress: bool = True,
    check_every: int = 0,
    cost: CostModel | None = None,
    prefetch: bool = False,
) -> dict:
    """Run the trace; returns hit rates by tier, pages moved, evictions and per-op timings.

    With `cost`, requests queue for one GPU at their timestamps and each one's TTFT is modelled
    on a simulated clock (`timed`); their remote parts are read when they arrive. `prefetch`
    (needs `cost`) runs the cache's prefetcher between turns on the host->device link's idle
    time: queued requests' host parts go to the device before their turn, and returning
    sessions are promoted ahead of their predicted return.
    """
    if prefetch and cost is None:
        raise ValueError("prefetch needs the timed replay (--timed): it runs on idle link time")
    layout = KVLayout(
        num_layers=1, num_kv_heads=1, head_dim=1, page_size=spec.page_size, dtype=torch.float16
    )
    # a real file store, in memory-backed /dev/shm where there is one (the replay times the
    # cache, not a disk)
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fresh_dir = spec.remote_pages and spec.remote_url is None
    remote_dir = tempfile.mkdtemp(prefix="radixkv-replay-", dir=shm) if fresh_dir else None
    store = None
    if spec.remote_pages and spec.remote_url is not None:
        store = open_store(spec.remote_url)  # shared: the namespace below is this run's own
    if remote_dir:
        blob_bytes = layout.page_bytes + HEADER_FIXED_BYTES + 4 * len(layout.page_shape)
        store = FileStore(remote_dir, capacity_bytes=spec.remote_pages * blob_bytes)
    config = CacheConfig(
        device_pages=spec.device_pages,
        host_pages=spec.host_pages,
        remote_pages=spec.remote_pages,
        policy="lru" if oracle else spec.policy,
        write_policy=spec.write_policy,
        remote_admission=spec.remote_admission,
        remote_io="inline",  # remote calls run on this thread, in order: a replay is deterministic
    )
    cache = HiRadixCache(
        layout,
        config,
        # a namespace of its own: runs sharing a store never read each other's pages
        namespace=CacheNamespace(f"trace-replay-{secrets.token_hex(8)}", layout),
        store=store,
        device="cpu",
        policy_factory=(lambda: NextUsePolicy(oracle)) if oracle else None,
    )
    ps = spec.page_size
    hit = [0, 0, 0]
    per_request: list[list[int]] = []  # each request's hit tokens by tier, in trace order
    total = skipped = 0
    timings = dict.fromkeys(TIMED, 0.0)
    clock = time.perf_counter
    served = ServingClock(cost) if cost is not None else None
    t_first = requests[0].timestamp_ms if requests else 0
    n = len(requests)
    arrival = [
        (r.timestamp_ms - t_first) / 1e3 * cost.time_scale if cost else 0.0 for r in requests
    ]
    pf = cache.prefetcher
    sessions = SessionGuess() if prefetch else None
    # arrived, not yet run: index -> (tokens, remote ticket, tokens read, read done at, expect)
    waiting: dict[int, tuple] = {}
    unread: list[tuple[float, int]] = []  # (remote read done at, index): not yet expected
    arrived = 0  # requests [0, arrived) have arrived

    def arrive(j: int) -> None:
        """Request j joins the queue: its remote part is read now; the prefetcher is told."""
        tokens = requests[j].tokens()
        t0 = clock()
        ticket, read, took = None, 0, None
        if cache.match(tokens, touch=False).remote_tokens:
            t_read = clock()
            ticket = cache.prefetch(tokens, discover=False, hold=True)
            cache.wait_idle()  # the store's reads run now, on this thread: timed
            took = clock() - t_read
            read = ticket.fetched_tokens
        timings["prefetch"] += clock() - t0
        done = served.read_remote(arrival[j], read, took) if served else 0.0
        expect = None
        if prefetch:
            session, returning = sessions.arrive(j, requests[j])
            if returning:
                pf.turn_began(session, arrival[j])
            expect = [None, session]  # expected once its remote part is on host (`unread`)
            heapq.heappush(unread, (done, j))
        waiting[j] = (tokens, ticket, read, done, expect)

    def run_prefetcher(now: float, i: int) -> None:
        """Between turns: promote on the link's idle time before the next turn needs it. A
        queued request is expected from when its remote read is done: before that, in simulated
        time, its pages are not on host yet (the cache read them at once)."""
        while unread and unread[0][0] <= now:
            _, j = heapq.heappop(unread)
            if j in waiting:
                waiting[j][4][0] = pf.expect(waiting[j][0])
        queued = arrived > i + 1
        nxt = served.gpu_free if queued or arrived >= n else max(served.gpu_free, arrival[arrived])
        budget = served.idle_tokens(now, nxt) // ps
        nxt_arrival = arrival[arrived] if arrived < n else math.inf
        remote_budget = served.idle_tokens(now, nxt_arrival, remote=True) // ps
        moved, fetched = pf.step(
            now,
            device_pages=min(budget, spec.device_pages),
            host_pages=min(remote_budget, spec.host_pages),
        )
        if moved:
            served.book(now, moved * ps)
        if fetched:
            t_read = clock()
            cache.wait_idle()  # the promotions' remote reads run now: timed
            served.book(now, fetched * ps, remote=True, measured_s=clock() - t_read)

    try:
        label = "offline bound" if oracle else spec.policy
        for i in tqdm(
            range(n), desc=f"replay {label}", unit="req", disable=not progress, mininterval=1.0
        ):
            req = requests[i]
            start = served.turn_start(arrival[i]) if served else 0.0
            while arrived <= i or (served and arrived < n and arrival[arrived] <= start):
                arrive(arrived)
                arrived += 1
                if prefetch:
                    run_prefetcher(arrival[arrived - 1], i - 1)
            if oracle:
                oracle.now = i
            tokens, ticket, read, remote_done, expect = waiting.pop(i)
            total += len(tokens)
            t0 = clock()
            m = cache.match(tokens)
            t1 = clock()
            fetched = min(read, m.host_tokens)
            mine = [m.device_tokens, m.host_tokens - fetched, fetched]
            for t in (DEVICE, HOST, REMOTE):
                hit[t] += mine[t]
            per_request.append(mine)
            cache.lock(m.last_node)
            cache.release_prefetch(ticket)  # its pages are locked by the request now
            if expect is not None:
                pf.release(expect[0])  # None if its remote read was not done before its turn
            cache.load(m)
            t2 = clock()
            device_pages = cache.match(tokens, touch=False).device_pages
            try:
                new = cache.alloc(len(tokens) // ps - len(device_pages))
            except OutOfPages:  # longer than the device tier can hold at once: served uncached
                skipped += 1
                cache.unlock(m.last_node)
                if served is not None:
                    served.serve(arrival[i], len(tokens), prompt_tokens=len(tokens))
                continue
            if served is not None:
                uncached = len(tokens) - m.device_tokens - m.host_tokens
                served.serve(arrival[i], uncached, m.host_tokens, remote_done, len(tokens))
            t3 = clock()
            pages = device_pages + new
            if spec.prefill_chunk:  # as the engine: cached after each chunk past the hit, and
                # written a tier down while the next chunk computes
                step, start = spec.prefill_chunk, len(device_pages) * ps
                for end in range(start + step, len(tokens), step):
                    cache.insert(tokens[: end // ps * ps], pages[: end // ps])
                    cache.wait_idle()
            cache.insert(tokens, pages)
            cache.unlock(m.last_node)
            cache.wait_idle()  # its write-through to the remote tier
            t4 = clock()
            for name, dt in zip(
                ("match", "load", "alloc", "insert"),
                (t1 - t0, t2 - t1, t3 - t2, t4 - t3),
                strict=True,
            ):
                timings[name] += dt
            if prefetch:
                context = sessions.context(expect[1], req)
                if context:
                    pf.turn_ended(expect[1], tokens[:context], served.gpu_free)
                run_prefetcher(start, i)
            if check_every and i % check_every == 0:
                cache.check_integrity()
        cache.wait_idle()
        integrity = cache.check_integrity()
        prefetch_report = pf.report(sum(hit)) if prefetch else None
    finally:
        cache.close()
        if remote_dir:
            shutil.rmtree(remote_dir, ignore_errors=True)
    result = {
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
        "remote_admission": (
            cache.writes.admission.as_dict() if cache.writes.admission is not None else None
        ),
        "evictions": dict(
            zip(("device", "host", "remote"), cache.counters.evicted_pages, strict=True)
        ),
        "requests_too_long_for_device": skipped,
        "hits_per_request": per_request,  # [device, host, remote] tokens
        "timings_us_per_request": {k: 1e6 * v / n for k, v in timings.items()},
        "replay_seconds": sum(timings.values()),
        "final_integrity": integrity,
    }
    if served is not None:
        result["timed"] = served.report(arrival[-1] if requests else 0.0)
    if prefetch_report is not None:
        # the replay's pages are tiny: wasted bytes at the cost model's KV size instead
        prefetch_report["wasted_bytes"] = (
            prefetch_report["wasted_pages"] * ps * cost.kv_bytes_per_token
        )
        result["prefetch"] = prefetch_report
    return result


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
