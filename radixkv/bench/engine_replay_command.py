"""`python -m radixkv.bench trace --engine`: its flags, the tiers cut to what the machine holds,
the three configurations run through the engine (`radixkv.bench.engine_replay`) beside the
simulator, and the table they print."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import asdict, replace

from radixkv.bench.engine_replay import (
    CONFIGS,
    MODES,
    TIERS,
    EngineReplaySpec,
    engine_replay,
    fitting,
    hit_differences,
    simulate,
)
from radixkv.bench.timed import CostModel
from radixkv.bench.trace_replay import ReplaySpec
from radixkv.bench.tracefile import TraceRequest


def add_engine_flags(t) -> None:
    """`trace --engine`'s flags (the trace subcommand's own give the trace and the tiers)."""
    from engine.attention.flashinfer_backend import PREFIX_KERNELS

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
        "--deadline-s",
        type=float,
        default=None,
        help="submit no request after this many seconds of each configuration's replay (the "
        "figures and the simulator's then cover the ones submitted): for a run that must end in "
        "time",
    )
    g.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="the engine's tokens per forward step (prefill chunk); the simulator caches each "
        "prompt in chunks of it, as the engine does (default: the engine's own, 2,048); 0, in "
        "the simulator alone, caches each prompt whole (the tables before 2026-12-08)",
    )
    g.add_argument(
        "--overlap-schedule",
        choices=("auto", "on", "off"),
        default=None,
        help="the engine's overlap schedule (default: its own, on for CUDA)",
    )
    g.add_argument(
        "--prefix-attention-kernel",
        choices=PREFIX_KERNELS,
        default=None,
        help="flashinfer's kernel for a prefill chunk over a cached prefix (default: the "
        "engine's own, fa2)",
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
    run = EngineReplaySpec(
        args.mode, args.rate_scale, args.max_output, args.ttft_bound_ms, args.deadline_s
    )
    options = {"model": args.model, "device": args.device}
    for name in (
        "remote_load_margin",
        "max_batch_tokens",
        "overlap_schedule",
        "prefix_attention_kernel",
    ):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    # a probe for the page size, the context and the GPU's floors (0.5 GB: room for its warm-up)
    probe = Engine(kv_memory_gb=0.5, host_memory_gb=0, remote_url="none", **options)
    page_bytes, context = probe.cache.layout.page_bytes, probe.core.context_length
    chunk = probe.core.config.max_batch_tokens  # the simulator caches prompts as the engine does
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
        spec = ReplaySpec(
            args.page_size, dev, host, remote, args.policy.split(",")[0], prefill_chunk=chunk
        )
        eng = engine_replay(runnable, spec, run, page_bytes=page_bytes, floors=floors, **options)
        sim = simulate(runnable[: eng["submitted"]], spec, cost)
        if cost is not None and "prefill_efficiency" in eng:  # the model at the engine's speed
            measured = calibrated(cost, eng, floors)
            again = simulate(runnable[: eng["submitted"]], spec, measured)
            sim["calibrated"] = {
                "prefill_efficiency": eng["prefill_efficiency"],
                "prefill_tokens_per_s": measured.prefill_tokens_per_s,
                "attention_pairs_per_s": measured.attention_pairs_per_s,
                "ttft_ms": again["ttft_ms"],
            }
        rows[name] = {
            "tokens": {t: pages[t] * args.page_size for t in TIERS},
            "skipped_too_long": len(requests) - len(runnable),
            "cut_at_deadline": len(runnable) - eng["submitted"],
            "engine": eng,
            "simulator": sim,
            "differences": hit_differences(eng["per_request"]["cached"], sim["per_request"]),
        }
        print(format_engine_table({name: rows[name]}, run), flush=True)
    print(format_engine_table(rows, run))
    return {
        "command": getattr(args, "command_line", None),  # what reproduces this run
        "run": asdict(run),
        "floors": floors,
        "configurations": rows,
    }


def calibrated(cost: CostModel, eng: dict, floors: dict) -> CostModel:
    """`cost` with prefill at the speed the engine showed: both prefill terms at its
    `prefill_efficiency` (the run's prefill floor over the time it had work) of the measured
    matmul peak. The model has no decode, so the engine's whole busy time goes to prefill; the
    FLOPs per token and per attention pair are the floor's (`radixkv.bench.floors`)."""
    flops = eng["prefill_efficiency"] * floors["matmul_tflops"] * 1e12  # per second
    per = eng["prefill_flops"]
    return replace(
        cost,
        prefill_tokens_per_s=flops / per["per_token"],
        attention_pairs_per_s=flops / per["per_pair"],
    )


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
        cut = r.get("cut_at_deadline", 0)
        lines.append(
            f"{'':<20}engine/simulator by tier: {by}; {e['requests']:,} requests, "
            f"{r['skipped_too_long']} too long"
            + (f", {cut:,} not sent by the deadline" if cut else "")
        )
        d = r.get("differences")
        if d and d["requests"]:
            lines.append(
                f"{'':<20}{d['requests']:,} requests hit other tokens than in the simulator: the "
                f"engine {d['engine_more_tokens']:,} more, {d['engine_fewer_tokens']:,} fewer "
                "(JSON: differences.first, [request, engine, simulator])"
            )
        if "ttft_ms" in s:
            m = s["ttft_ms"]
            lines.append(
                f"{'':<20}simulator's modelled TTFT p50/p90/p99 {m['p50']:,.0f}/{m['p90']:,.0f}/"
                f"{m['p99']:,.0f} ms (engine's p50 / model's: {q['p50'] / max(m['p50'], 1e-9):.2f}x)"
            )
        if "calibrated" in s:
            c, m = s["calibrated"], s["calibrated"]["ttft_ms"]
            lines.append(
                f"{'':<20}at the engine's measured speed ({c['prefill_efficiency']:.0%} of the "
                f"matmul peak: {c['prefill_tokens_per_s']:,.0f} tokens/s and "
                f"{c['attention_pairs_per_s']:.3g} attention pairs/s): p50/p90/p99 "
                f"{m['p50']:,.0f}/{m['p90']:,.0f}/{m['p99']:,.0f} ms (engine's p50 / model's: "
                f"{q['p50'] / max(m['p50'], 1e-9):.2f}x)"
            )
    lines.append(
        f"mode {run.mode}; TTFT/TPOT in ms; 'in bound': TTFT within {run.ttft_bound_ms:,.0f} ms; "
        "floor: the run's work at the GPU's measured matmul peak, HBM and host->device bandwidth "
        "(radixkv.bench.floors; none on CPU)"
    )
    return "\n".join(lines)
