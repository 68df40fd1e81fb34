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
import os
import random
import shutil
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

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.rate_scale > 0 or self.max_output < 1 or not self.ttft_bound_ms > 0:
            raise ValueError("--rate-scale and --ttft-bound-ms must be > 0, --max-output >= 1")


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
    given the GPU's measured `floors`, the least time the run's work takes (`floor_s`)."""
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
            blocks = BlockTokens(eng.core.model.config.vocab_size)
            prompts = [blocks.prompt(r) for r in requests]
            done, duration = _drive(eng, requests, prompts, run, progress, tqdm)
            out = _summary(done, duration, run)
            if floors is not None:
                out.update(_floor(eng, done, run, floors, duration, requests))
            return out
        finally:
            eng.close()


def _drive(eng, requests, prompts, run: EngineReplaySpec, progress: bool, tqdm) -> dict:
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
    nxt = 0
    while nxt < len(requests) or live:
        now = time.perf_counter() - start
        while nxt < len(requests) and (
            (run.mode == "sequential" and not live)
            or (run.mode != "sequential" and due[nxt] <= now)
        ):
            if run.mode == "sequential":  # the last request's writes to the tiers are done, as
                eng.cache.wait_idle(timeout_s=600)  # the simulator models them (inline)
            live.append(eng.submit(prompts[nxt], max_tokens=outputs[nxt], ignore_eos=True))
            nxt += 1
        if not live:
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
    return done, duration


def _floor(eng, done: list[tuple], run: EngineReplaySpec, floors: dict, duration: float, requests):
    """The least time this run's work takes on this GPU (`radixkv.bench.floors`): decode steps
    are every output token one after another when requests run one at a time, else at least the
    longest output and at least the output tokens / the most requests the device tier holds at
    once. A timed run also takes at least its arrivals' span."""
    from radixkv.bench.floors import Work, weight_bytes, work_floor

    cfg, layout = eng.model.config, eng.cache.layout
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
        attn_dim=cfg.num_heads * cfg.head_dim,
        w_bytes=weight_bytes(eng.model),
        kv_bytes_per_token=layout.page_bytes / layout.page_size,
        floors=floors,
        decode_steps=steps,
    )
    floor = sum(parts.values())
    if run.mode == "timed" and requests:
        span = (requests[-1].timestamp_ms - requests[0].timestamp_ms) / 1e3 * run.rate_scale
        floor = max(floor, span)
    return {"floor_s": floor, "floor_parts_s": parts, "ratio_to_floor": duration / max(floor, 1e-9)}


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
    }


def simulate(requests: list[TraceRequest], cache: ReplaySpec, cost=None) -> dict:
    """The simulator at the same capacities: its hit rates and, given a `CostModel`, its
    modelled TTFT percentiles (ms)."""
    r = replay(requests, cache, progress=False, cost=cost)
    out = {"token_hit_rate": r["token_hit_rate"], "hit_rate_by_tier": r["hit_rate_by_tier"]}
    if cost is not None:
        out["ttft_ms"] = r["timed"]["ttft_ms"]
    return out


def fitting(
    requests: list[TraceRequest], device_tokens: int, context: int, max_output: int
) -> list[TraceRequest]:
    """The requests one engine can run: prompt plus output within the model's context and the
    device tier (the engine refuses the rest; the simulator would serve them uncached)."""
    limit = min(device_tokens, context)
    return [
        r for r in requests if r.input_length + max(1, min(r.output_length, max_output)) <= limit
    ]


def add_engine_flags(t) -> None:
    """`trace --engine`'s flags (the trace subcommand's own give the trace and the tiers)."""
    g = t.add_argument_group(
        "through the engine (--engine): the trace's requests run by a real Engine, device only, "
        "device+host and device+host+remote, each beside the simulator at the same capacities"
    )
    g.add_argument("--engine", action="store_true", help="replay through the engine")
    g.add_argument(
        "--model", default=None, help="the engine's model (default: the default model; llama-3-8b)"
    )
    g.add_argument("--device", default="auto", help="cpu, cuda or auto")
    g.add_argument("--mode", choices=MODES, default="sequential")
    g.add_argument("--rate-scale", type=float, default=1.0, help="timed: x the trace's gaps")
    g.add_argument("--max-output", type=int, default=64, help="output tokens per request at most")
    g.add_argument("--ttft-bound-ms", type=float, default=2000.0)
    g.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="the engine's tokens per forward step (prefill chunk); default: the engine's own",
    )
    g.add_argument(
        "--overlap-schedule",
        choices=("auto", "on", "off"),
        default=None,
        help="the engine's overlap schedule (default: its own, on for CUDA)",
    )
    g.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"which configurations to run, comma-separated (of {', '.join(CONFIGS)})",
    )
    g.add_argument(
        "--remote-load-margin",
        type=float,
        default=None,
        help="the engine's load-or-recompute margin (0: always load remote hits, as the "
        "simulator does; default: the engine's own estimate)",
    )


def machine_limits(probe, page_bytes: int, margin_gib: float = 12.0) -> dict[str, int]:
    """The most pages each tier can have on this machine: the GPU's free memory beside the
    model's weights (`margin_gib` left for activations and CUDA graphs), half the host's
    available memory (pinned) and 80% of the temporary directory's free disk."""
    import torch

    limits = {}
    if probe.device.type == "cuda":
        free = torch.cuda.mem_get_info(probe.device)[0]
        limits["device"] = max(1, int(free - margin_gib * 2**30) // page_bytes)
    avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limits["host"] = avail // 2 // page_bytes
    limits["remote"] = int(shutil.disk_usage(tempfile.gettempdir()).free * 0.8) // page_bytes
    return limits


def engine_trace_command(args, requests: list[TraceRequest], unique: int) -> dict:
    """Run the three configurations through the engine and the simulator; print the table."""
    from radixkv import Engine
    from radixkv.bench.trace_replay import capacities

    wanted = args.configs.split(",")
    if not wanted or set(wanted) - set(CONFIGS):
        raise ValueError(f"--configs takes some of {', '.join(CONFIGS)}, got {args.configs!r}")
    run = EngineReplaySpec(args.mode, args.rate_scale, args.max_output, args.ttft_bound_ms)
    options = {"model": args.model, "device": args.device}
    for name in ("remote_load_margin", "max_batch_tokens", "overlap_schedule"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    # a probe for the page size, the context and the GPU's floors (0.5 GB: room for its warm-up)
    probe = Engine(kv_memory_gb=0.5, host_memory_gb=0, remote_url="none", **options)
    page_bytes, context = probe.cache.layout.page_bytes, probe.core.context_length
    page_bytes = page_bytes * args.page_size // probe.cache.page_size
    limits = machine_limits(probe, page_bytes)
    floors = None
    if probe.device.type == "cuda":  # measured once, beside the model's weights
        from radixkv.bench.floors import measure_floors

        floors = measure_floors(probe.device)
    probe.close()
    cost = None
    if run.mode == "timed":  # the simulator's clock beside the engine's: its own defaults (an
        # H200's llama-3-8b figures), this model's KV size and this GPU's measured link
        from radixkv.bench.timed import CostModel

        h2d = {"h2d_gbps": floors["h2d_pinned_gbps"]} if floors else {}
        per_token = page_bytes // args.page_size
        cost = CostModel(kv_bytes_per_token=per_token, time_scale=run.rate_scale, **h2d)
    host_frac, remote_frac = args.host_frac or 0.2, args.remote_frac or 1.0
    fracs = dict(
        zip(CONFIGS, ((0.0, 0.0), (host_frac, 0.0), (host_frac, remote_frac)), strict=True)
    )
    configs = [(name, *fracs[name]) for name in CONFIGS if name in wanted]
    rows = {}
    for name, host_frac, rf in configs:
        sizes = capacities(unique, args.page_size, args.device_frac, host_frac, rf)
        pages = dict(zip(TIERS, sizes, strict=True))
        for tier, most in limits.items():
            if pages[tier] > most:
                print(
                    f"{name}: the {tier} tier is cut from {pages[tier] * args.page_size:,} to "
                    f"{most * args.page_size:,} tokens, what this machine holds (the simulator "
                    "gets the same)",
                    flush=True,
                )
                pages[tier] = most
        dev, host, remote = (pages[t] for t in TIERS)
        runnable = fitting(requests, dev * args.page_size, context, args.max_output)
        if not runnable:
            raise ValueError(
                f"no request fits the model's context ({context:,} tokens) and the device tier "
                f"({dev * args.page_size:,} tokens): raise --device-frac or --limit, or use a "
                "longer-context model"
            )
        spec = ReplaySpec(args.page_size, dev, host, remote, args.policy.split(",")[0])
        eng = engine_replay(runnable, spec, run, page_bytes=page_bytes, floors=floors, **options)
        sim = simulate(runnable, spec, cost)
        rows[name] = {
            "tokens": {t: pages[t] * args.page_size for t in TIERS},
            "skipped_too_long": len(requests) - len(runnable),
            "engine": eng,
            "simulator": sim,
        }
        print(format_engine_table({name: rows[name]}, run), flush=True)
    print(format_engine_table(rows, run))
    return {"floors": floors, "configurations": rows}


def format_engine_table(rows: dict, run: EngineReplaySpec) -> str:
    lines = [
        f"\n{'configuration':<20}{'tiers (tokens)':>24}{'engine hit':>11}{'sim hit':>9}"
        f"{'TTFT p50':>10}{'p90':>9}{'p99':>9}{'TPOT':>8}{'req/s':>8}{'in bound':>9}"
        f"{'wall s':>8}{'floor s':>8}{'x floor':>8}"
    ]
    for name, r in rows.items():
        e, s, t = r["engine"], r["simulator"], r["tokens"]
        tiers = "/".join(f"{t[x]:,}" for x in TIERS)
        q = e["ttft_ms"]
        lines.append(
            f"{name:<20}{tiers:>24}{e['token_hit_rate']:>11.2%}{s['token_hit_rate']:>9.2%}"
            f"{q['p50']:>10,.0f}{q['p90']:>9,.0f}{q['p99']:>9,.0f}{e['tpot_ms']['p50']:>8.1f}"
            f"{e['requests_per_s']:>8.2f}{e['within_ttft_bound']:>9.0%}{e['seconds']:>8.1f}"
            + (
                f"{e['floor_s']:>8.1f}{e['ratio_to_floor']:>8.2f}"
                if "floor_s" in e
                else f"{'-':>8}{'-':>8}"
            )
        )
        by = " ".join(
            f"{x} {e['hit_rate_by_tier'][x]:.2%}/{s['hit_rate_by_tier'][x]:.2%}" for x in TIERS
        )
        lines.append(f"{'':<20}engine/simulator by tier: {by}; {r['skipped_too_long']} too long")
        if "ttft_ms" in s:
            m = s["ttft_ms"]
            lines.append(
                f"{'':<20}simulator's modelled TTFT p50/p90/p99 {m['p50']:,.0f}/{m['p90']:,.0f}/"
                f"{m['p99']:,.0f} ms (engine's p50 / model's: {q['p50'] / max(m['p50'], 1e-9):.2f}x)"
            )
    lines.append(
        f"mode {run.mode}; TTFT/TPOT in ms; 'in bound': TTFT within {run.ttft_bound_ms:,.0f} ms; "
        "floor: the run's work at the GPU's measured matmul peak, HBM and host->device bandwidth "
        "(radixkv.bench.floors; none on CPU)"
    )
    return "\n".join(lines)
