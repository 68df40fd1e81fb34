"""Replay a Mooncake trace through the real engine (scheduler, model, tiers), beside the cache
simulator (`radixkv.bench.trace_replay`) at the same capacities, policy and page size.

Each hash id becomes a fixed 512-token block of token ids (equal ids, equal tokens; the last
block cut to the request's length); each request asks for its traced output length
(`ignore_eos`), capped by `max_output`. Requests go in one at a time, each once the last one's
writes to the tiers are done (`sequential`: what the simulator models, so their hit rates must
agree), all at once (`asap`), or at the trace's timestamps times `rate_scale` (`timed`); in
the last two a store slower than the model sheds writes, as it would in service.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from radixkv.bench.report import percentile
from radixkv.bench.trace_replay import ReplaySpec, replay
from radixkv.bench.tracefile import BLOCK, TraceRequest

MODES = ("sequential", "asap", "timed")
TIERS = ("device", "host", "remote")
CONFIGS = ("device", "device+host", "device+host+remote")


class BlockTokens:
    """Token ids for a trace's hash ids: block h is 512 ids drawn from a generator seeded by h
    (kept once made), in [low, vocab)."""

    def __init__(self, vocab: int, low: int = 1) -> None:
        self.vocab, self.low = vocab, low
        self._blocks: dict[int, list[int]] = {}

    def prompt(self, req: TraceRequest) -> list[int]:
        out: list[int] = []
        for i, h in enumerate(req.hash_ids):
            block = self._blocks.get(h)
            if block is None:
                rng = random.Random(h)
                block = [rng.randrange(self.low, self.vocab) for _ in range(BLOCK)]
                self._blocks[h] = block
            out += block[: min(BLOCK, req.input_length - i * BLOCK)]
        return out


@dataclass(frozen=True)
class EngineReplaySpec:
    mode: str = "sequential"
    rate_scale: float = 1.0  # timed: seconds between requests = the trace's x this
    max_output: int = 64  # output tokens per request at most (the trace's length otherwise)
    ttft_bound_ms: float = 2000.0  # the report's share of requests within this TTFT
    # no request is submitted after this many seconds of the replay (the ones running finish;
    # the figures, the simulator's and the floor cover the submitted ones): a run that must end
    # within a time limit reports what it did instead of nothing
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.rate_scale > 0 or self.max_output < 1 or not self.ttft_bound_ms > 0:
            raise ValueError("--rate-scale and --ttft-bound-ms must be > 0, --max-output >= 1")
        if self.deadline_s is not None and not self.deadline_s > 0:
            raise ValueError(f"--deadline-s must be > 0, got {self.deadline_s}")


def engine_replay(
    requests: list[TraceRequest],
    cache: ReplaySpec,
    run: EngineReplaySpec,
    *,
    page_bytes: int,
    progress: bool = True,
    floors: dict | None = None,
    **engine_options,
) -> dict:
    """Run the trace through an `Engine` with exactly `cache`'s pages per tier (a fresh file
    store as the remote tier); returns hit rates by tier, TTFT and TPOT percentiles, req/s and,
    given the GPU's measured `floors`, the least time the run's work takes (`floor_s`), over
    the first `submitted` requests (all of them unless `run.deadline_s` cut the replay short)."""
    from tqdm import tqdm

    from radixkv import Engine

    def gib(pages: int) -> float:  # the engine rounds GiB down to pages: half a page over
        return (pages * page_bytes + page_bytes // 2) / 2**30

    with tempfile.TemporaryDirectory(prefix="radixkv-engine-replay-") as tmp:
        remote = Path(tmp, "remote").as_uri() if cache.remote_pages else "none"
        eng = Engine(
            page_size=cache.page_size,
            kv_memory_gb=gib(cache.device_pages),
            host_memory_gb=gib(cache.host_pages),
            remote_url=remote,
            remote_max_gb=gib(cache.remote_pages) * 1.1 if cache.remote_pages else None,
            remote_pages=max(1, cache.remote_pages),  # what the tree tracks, as the simulator
            policy=cache.policy,
            write_policy=cache.write_policy,
            remote_admission=cache.remote_admission,
            **engine_options,
        )
        try:
            tiers = eng.cache.config
            assert (tiers.device_pages, tiers.host_pages) == (cache.device_pages, cache.host_pages)
            chunk = eng.core.config.max_batch_tokens
            if cache.prefill_chunk not in (0, chunk):
                raise ValueError(
                    f"the simulator's prefill chunk ({cache.prefill_chunk}) is not the engine's "
                    f"max_batch_tokens ({chunk})"
                )
            blocks = BlockTokens(eng.core.model.config.vocab_size)
            prompts = [blocks.prompt(r) for r in requests]
            done, duration, submitted = _drive(eng, requests, prompts, run, progress, tqdm)
            report = eng.core.cache_report()  # this thread steps the engine: it owns the core
            out = _summary(done, duration, run) | {
                "submitted": submitted,
                "cache_counters": report["counters"] | {"pages_moved": report["pages_moved"]},
            }
            if floors is not None:
                out.update(
                    _floor(eng, done, run, floors, duration, requests[:submitted], out["busy_s"])
                )
            return out
        finally:
            eng.close()


def _drive(eng, requests, prompts, run: EngineReplaySpec, progress: bool, tqdm) -> tuple:
    """Submit the requests as `run.mode` says and step the engine until they finish; returns
    (request, finished at) pairs, the wall time and how many were submitted."""
    t0_ms = requests[0].timestamp_ms if requests else 0
    due = [
        (r.timestamp_ms - t0_ms) / 1e3 * run.rate_scale if run.mode == "timed" else 0.0
        for r in requests
    ]
    outputs = [max(1, min(r.output_length, run.max_output)) for r in requests]
    live: list = []  # submitted, unfinished
    done: list[tuple] = []  # (request, finished at)
    bar = tqdm(total=len(requests), desc=f"engine {run.mode}", unit="req", disable=not progress)
    start = time.perf_counter()
    nxt, last = 0, len(requests)  # last: where submission stops (cut at the deadline)
    while nxt < last or live:
        now = time.perf_counter() - start
        if run.deadline_s is not None and now >= run.deadline_s and last > nxt:
            last = nxt
            bar.total = last
            bar.refresh()
        while nxt < last and (
            (run.mode == "sequential" and not live)
            or (run.mode != "sequential" and due[nxt] <= now)
        ):
            if run.mode == "sequential":  # the last request's writes to the tiers are done, as
                eng.cache.wait_idle(timeout_s=600)  # the simulator models them (inline)
            live.append(eng.submit(prompts[nxt], max_tokens=outputs[nxt], ignore_eos=True))
            nxt += 1
        if not live:
            if nxt < last:
                time.sleep(max(0.0, min(due[nxt] - now, 0.05)))
            continue
        eng.step()
        t = time.perf_counter()
        still = []
        for r in live:
            if r.finish_reason is None:
                still.append(r)
            else:
                done.append((r, t))
                bar.update(1)
        live = still
    duration = time.perf_counter() - start
    bar.close()
    return done, duration, nxt


def _floor(
    eng,
    done: list[tuple],
    run: EngineReplaySpec,
    floors: dict,
    duration: float,
    requests,
    busy_s: float,
):
    """The least time this run's work takes on this GPU (`radixkv.bench.floors`): decode steps
    are every output token one after another when requests run one at a time, else at least the
    longest output and at least the output tokens / the most requests the device tier holds at
    once. A timed run also takes at least its arrivals' span. `busy_s`: how long the engine had
    work (`busy_seconds`), over which the prefill floor gives `prefill_efficiency`."""
    from radixkv.bench.floors import Work, prefill_flops, weight_bytes, work_floor

    cfg, layout = eng.model.config, eng.cache.layout
    attn_dim, w_bytes = cfg.num_heads * cfg.head_dim, weight_bytes(eng.model)
    work = [
        Work(
            len(r.prompt_ids),
            sum(r.cached_by_tier.values()),
            r.cached_by_tier["host"] + r.cached_by_tier["remote"],
            len(r.output_ids),
        )
        for r, _ in done
    ]
    outputs = [w.output for w in work] or [0]
    if run.mode == "sequential":
        steps = sum(outputs)
    else:
        context = sum(w.prompt + w.output for w in work) / max(len(work), 1)
        fits = eng.cache.config.device_pages * layout.page_size // max(context, 1)
        at_once = max(1, min(eng.core.config.max_running, int(fits)))
        steps = max(max(outputs), math.ceil(sum(outputs) / at_once))
    parts = work_floor(
        work,
        num_layers=cfg.num_layers,
        attn_dim=attn_dim,
        w_bytes=w_bytes,
        kv_bytes_per_token=layout.page_bytes / layout.page_size,
        floors=floors,
        decode_steps=steps,
    )
    floor = sum(parts.values())
    if run.mode == "timed" and requests:
        span = (requests[-1].timestamp_ms - requests[0].timestamp_ms) / 1e3 * run.rate_scale
        floor = max(floor, span)
    per_token, per_pair = prefill_flops(
        w_bytes=w_bytes, num_layers=cfg.num_layers, attn_dim=attn_dim
    )
    return {
        "floor_s": floor,
        "floor_parts_s": parts,
        "ratio_to_floor": duration / max(floor, 1e-9),
        # the prefill floor over the time the engine had work: the share of the matmul peak its
        # whole busy time (decode included) comes to, as prefill
        "prefill_efficiency": parts["prefill"] / max(busy_s, 1e-9),
        "prefill_flops": {"per_token": per_token, "per_pair": per_pair},
    }


def _summary(done: list[tuple], duration: float, run: EngineReplaySpec) -> dict:
    """Hit rates by tier, TTFT and TPOT percentiles, req/s, share within the TTFT bound."""
    prompt = sum(len(r.prompt_ids) for r, _ in done)
    by_tier = {t: sum(r.cached_by_tier[t] for r, _ in done) / max(prompt, 1) for t in TIERS}
    ttft = [r.first_token_at - r.arrival for r, _ in done if r.first_token_at is not None]
    tpot = [
        (end - r.first_token_at) / (len(r.output_ids) - 1)
        for r, end in done
        if r.first_token_at is not None and len(r.output_ids) > 1
    ]
    failed = sum(r.finish_reason not in ("length", "stop") for r, _ in done)
    return {
        "mode": run.mode,
        "requests": len(done),
        "failed": failed,
        "input_tokens": prompt,
        "token_hit_rate": sum(by_tier.values()),
        "hit_rate_by_tier": by_tier,
        "ttft_ms": {f"p{q}": (percentile(ttft, q) or 0) * 1e3 for q in (50, 90, 99)},
        "tpot_ms": {f"p{q}": (percentile(tpot, q) or 0) * 1e3 for q in (50, 90)},
        "requests_per_s": len(done) / duration,
        "within_ttft_bound": sum(t * 1e3 <= run.ttft_bound_ms for t in ttft) / max(len(ttft), 1),
        "seconds": duration,
        "busy_s": busy_seconds(done),
        "per_request": _per_request(done),
    }


def busy_seconds(done: list[tuple]) -> float:
    """How long the engine had work: the union of the requests' [arrival, finish] spans (the
    gaps of a timed run where nothing was in flight are left out)."""
    busy, reach = 0.0, -math.inf
    for start, end in sorted((r.arrival, end) for r, end in done):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def _per_request(done: list[tuple]) -> dict:
    """Each request's figures, in submission order: columns `prompt` (tokens), `cached` (hit
    tokens, every tier), `loaded` (of them, from host or remote), `arrival_s` and `finish_s`
    (since the first arrival), `ttft_s`, `output` (tokens)."""
    rows = sorted(done, key=lambda d: d[0].rid)  # ids are given in submission order
    t0 = rows[0][0].arrival if rows else 0.0
    cols = ("prompt", "cached", "loaded", "arrival_s", "finish_s", "ttft_s", "output")
    out: dict[str, list] = {c: [] for c in cols}
    for r, end in rows:
        hit = r.cached_by_tier
        ttft = None if r.first_token_at is None else round(r.first_token_at - r.arrival, 6)
        for c, v in zip(
            cols,
            (
                len(r.prompt_ids),
                sum(hit.values()),
                hit["host"] + hit["remote"],
                round(r.arrival - t0, 6),
                round(end - t0, 6),
                ttft,
                len(r.output_ids),
            ),
            strict=True,
        ):
            out[c].append(v)
    return out


def simulate(requests: list[TraceRequest], cache: ReplaySpec, cost=None) -> dict:
    """The simulator at the same capacities: its hit rates and, given a `CostModel`, its
    modelled TTFT percentiles (ms)."""
    r = replay(requests, cache, progress=False, cost=cost)
    out = {
        "token_hit_rate": r["token_hit_rate"],
        "hit_rate_by_tier": r["hit_rate_by_tier"],
        "per_request": [sum(hits) for hits in r["hits_per_request"]],  # hit tokens, every tier
    }
    if cost is not None:
        out["ttft_ms"] = r["timed"]["ttft_ms"]
    return out


def hit_differences(engine_hits: list[int], simulator_hits: list[int], show: int = 10) -> dict:
    """Where the engine's and the simulator's hits (tokens, every tier, in submission order)
    differ: how many requests, the tokens the engine hit more and fewer in all, and the first
    `show` of them as [index, engine, simulator]."""
    if len(engine_hits) != len(simulator_hits):
        raise ValueError(f"{len(engine_hits)} engine requests against {len(simulator_hits)}")
    diff = [
        (i, e, s)
        for i, (e, s) in enumerate(zip(engine_hits, simulator_hits, strict=True))
        if e != s
    ]
    return {
        "requests": len(diff),
        "engine_more_tokens": sum(e - s for _, e, s in diff if e > s),
        "engine_fewer_tokens": sum(s - e for _, e, s in diff if e < s),
        "first": [list(d) for d in diff[:show]],
    }


def fitting(
    requests: list[TraceRequest], device_tokens: int, context: int, max_output: int
) -> list[TraceRequest]:
    """The requests one engine can run: prompt plus output within the model's context and the
    device tier (the engine refuses the rest; the simulator would serve them uncached)."""
    limit = min(device_tokens, context)
    return [
        r for r in requests if r.input_length + max(1, min(r.output_length, max_output)) <= limit
    ]
