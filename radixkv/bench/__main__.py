"""`python -m radixkv.bench trace --trace FILE ...`: trace replay through the real cache.
`python -m radixkv.bench multiturn [--url URL] ...`: multi-turn conversations against a server.
`python -m radixkv.bench fleet [--engines N] ...`: N engines behind the SMG gateway, routing
configurations compared in one run."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
from pathlib import Path

from engine.config_flags import add_config_flags, config_from_args, config_to_flags
from radixkv.bench.engine_replay_command import add_engine_flags
from radixkv.bench.multi_engine import add_fleet_command, fleet_command
from radixkv.bench.multiturn_spec import add_workload_flags


def _trace_command(args: argparse.Namespace) -> int:
    from radixkv.bench.trace_replay import ReplaySpec, capacities, replay
    from radixkv.bench.tracefile import (
        NextUseOracle,
        ceiling_hit_tokens,
        load_trace,
        sample_conversations,
        unique_tokens,
    )

    if args.sample_conversations != 1:  # sampled from the whole trace, then cut to --limit
        requests = sample_conversations(load_trace(args.trace), args.sample_conversations)
        requests = requests[: args.limit]
    else:
        requests = load_trace(args.trace, limit=args.limit)
    unique = unique_tokens(requests)
    if args.engine:
        from radixkv.bench.engine_replay_command import engine_trace_command

        rows = engine_trace_command(args, requests, unique)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(rows, indent=2))
        return 0
    dev, host, remote = capacities(
        unique, args.page_size, args.device_frac, args.host_frac, args.remote_frac
    )
    chunk = args.max_batch_tokens
    if chunk is None:  # the engine's own: the simulator caches prompts as the engine does
        from engine.config import EngineConfig

        chunk = EngineConfig.__dataclass_fields__["max_batch_tokens"].default
    total = sum(r.input_length for r in requests)
    ceiling = ceiling_hit_tokens(requests, args.page_size) / total
    print(
        f"{args.trace}: {len(requests):,} requests, {total:,} input tokens, {unique:,} unique; "
        f"page size {args.page_size}; device {dev:,} pages, host {host:,}, remote {remote:,}; "
        f"write policy {args.write_policy}",
        file=sys.stderr,
    )
    cost = None
    if args.timed:
        from radixkv.bench.timed import CostModel

        cost = CostModel(
            prefill_tokens_per_s=args.prefill_tokens_per_s,
            attention_pairs_per_s=args.attention_pairs_per_s,
            kv_bytes_per_token=args.kv_bytes_per_token,
            h2d_gbps=args.h2d_gbps,
            remote_gbps=args.remote_gbps,
            remote_latency_ms=args.remote_latency_ms,
            time_scale=args.time_scale,
            remote_measured=args.remote_timing == "measured",
        )
    if args.prefetch and cost is None:
        raise ValueError("--prefetch needs --timed: the prefetcher runs on idle link time")
    results = {}
    for policy in args.policy.split(","):
        spec = ReplaySpec(
            args.page_size,
            dev,
            host,
            remote,
            policy,
            args.write_policy,
            args.remote_url,
            args.remote_admission,
            prefill_chunk=chunk,
        )
        for pf in (False, True) if args.prefetch else (False,):
            results[policy + (" +prefetch" if pf else "")] = replay(
                requests,
                spec,
                progress=not args.quiet,
                check_every=args.check_every,
                cost=cost,
                prefetch=pf,
            )
    bound = None
    if not args.no_bound:
        bound = replay(
            requests,
            ReplaySpec(
                args.page_size,
                dev,
                host,
                remote,
                "lru",
                args.write_policy,
                args.remote_url,
                prefill_chunk=chunk,
            ),
            oracle=NextUseOracle(requests),
            progress=not args.quiet,
            cost=cost,
        )

    rows = [*results.items(), *((("offline next-use", bound),) if bound else ())]
    print(
        f"\n{'policy':<18}{'hit rate':>9}{'device':>8}{'host':>8}{'remote':>8}{'evicted dev':>12}{'host':>10}{'us/req':>8}"
    )
    for name, r in rows:
        t = r["hit_rate_by_tier"]
        print(
            f"{name:<18}{r['token_hit_rate']:>9.4f}{t['device']:>8.4f}{t['host']:>8.4f}{t['remote']:>8.4f}"
            f"{r['evictions']['device']:>12,}{r['evictions']['host']:>10,}{sum(r['timings_us_per_request'].values()):>8.0f}"
        )
    print(f"{'never evicts':<18}{ceiling:>9.4f}   (ceiling)")
    first = results[next(iter(results))]
    if cost is not None:
        first_timed = first["timed"]
        print(
            f"\nmodelled TTFT (ms) at {len(requests) / max(1e-9, first_timed['simulated_seconds']):.2f}"
            f" req/s (time scale {cost.time_scale}); prefill {cost.prefill_tokens_per_s:,.0f} tok/s"
            + (
                f" + {cost.attention_pairs_per_s:.3g} attention pairs/s,"
                if math.isfinite(cost.attention_pairs_per_s)
                else ","
            )
            + f" host->device {cost.h2d_gbps} GB/s, remote {cost.remote_gbps} GB/s"
        )
        print(
            f"{'policy':<18}{'p50':>9}{'p90':>9}{'p99':>9}{'mean':>9}{'queued':>9}{'gpu busy':>9}"
        )
        for name, r in rows:
            t = r["timed"]
            q = t["ttft_ms"]
            print(
                f"{name:<18}{q['p50']:>9.0f}{q['p90']:>9.0f}{q['p99']:>9.0f}{q['mean']:>9.0f}"
                f"{t['queued_ms_mean']:>9.0f}{t['utilisation']['gpu']:>9.0%}"
            )
    prefetched = [(name, r["prefetch"]) for name, r in rows if "prefetch" in r]
    if prefetched:
        print(
            f"\n{'prefetch':<18}{'moved pg':>10}{'useful':>10}{'wasted':>10}{'precision':>10}"
            f"{'coverage':>10}{'wasted GB':>10}"
        )
        for name, p in prefetched:
            prec = "-" if p["precision"] is None else f"{p['precision']:.1%}"
            cov = "-" if p["coverage"] is None else f"{p['coverage']:.1%}"
            print(
                f"{name:<18}{p['moved_pages']:>10,}{p['useful_pages']:>10,}{p['wasted_pages']:>10,}"
                f"{prec:>10}{cov:>10}{p['wasted_bytes'] / 1e9:>10.2f}"
            )
    out = {
        "trace": str(args.trace),
        "requests": len(requests),
        "input_tokens": total,
        "unique_tokens": unique,
        "page_size": args.page_size,
        "capacity_pages": {"device": dev, "host": host, "remote": remote},
        "prefill_chunk": chunk,  # prompts cached in chunks of this many tokens (0: whole)
        "write_policy": args.write_policy,
        **{
            k: first[k]
            for k in (
                "token_hit_rate",
                "hit_rate_by_tier",
                "pages_moved",
                "evictions",
                "timings_us_per_request",
            )
        },
        "ceiling_token_hit_rate": ceiling,
        "bound_token_hit_rate": bound["token_hit_rate"] if bound else None,
        "policies": results,
        "bound": bound,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _multiturn_command(args: argparse.Namespace) -> int:
    import asyncio
    import contextlib

    from radixkv.bench.local_server import local_server
    from radixkv.bench.multiturn import run_multiturn
    from radixkv.bench.multiturn_spec import spec_from_args
    from radixkv.bench.report import format_report, plot_report

    spec = spec_from_args(args)
    engine_flags = config_to_flags(config_from_args(args))  # for the local server
    remote_url = getattr(args, "remote_url", None)
    with contextlib.ExitStack() as stack:
        if args.url and (engine_flags or args.serve_args):
            raise ValueError(
                "engine options configure the local server; a --url server has its own"
            )
        serve_args = shlex.join(engine_flags + shlex.split(args.serve_args))
        url = args.url or stack.enter_context(local_server(serve_args))
        base = url.rstrip("/")
        base = base if base.endswith("/v1") else base + "/v1"
        print(
            f"multiturn against {base}: {spec.clients} clients x {spec.rounds} rounds, system "
            f"{spec.system_tokens} / question {spec.question_tokens} / output {spec.output_tokens} "
            f"tokens, rate {spec.rate} ({spec.arrival}), max concurrency "
            f"{spec.max_concurrency or spec.clients}",
            file=sys.stderr,
        )
        report = asyncio.run(
            run_multiturn(
                base, spec, model=args.model, api_key=args.api_key, progress=not args.quiet
            )
        )
        report["scheduler"] = _scheduler_stats(base.removesuffix("/v1"), args.api_key)
    report["serve_args"] = None if args.url else serve_args
    report["remote_url"] = remote_url
    print(format_report(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        for p in plot_report(report, args.plot):
            print(f"wrote {p}", file=sys.stderr)
    return 0 if report["overall"]["failed"] == 0 else 1


def _scheduler_stats(root: str, api_key: str) -> dict | None:
    """The server's scheduler counters (preemptions, ...) from /cache/stats; None from a server
    that is not radixkv."""
    import urllib.request

    req = urllib.request.Request(
        root + "/cache/stats", headers={"Authorization": f"Bearer {api_key}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.loads(r.read()).get("scheduler")
    except (OSError, ValueError):
        return None


def _add_multiturn(sub) -> None:
    m = sub.add_parser(
        "multiturn",
        help="multi-turn conversations against an OpenAI-compatible server (a local one by default)",
    )
    m.add_argument("--url", help="server base URL (default: start python -m radixkv.serve)")
    m.add_argument("--model", help="model name to send (default: the server's first model)")
    m.add_argument("--api-key", default="none")
    add_workload_flags(m)
    m.add_argument(
        "--serve-args",
        default="",
        help="extra arguments for the local server, e.g. '--no-prefix-caching'",
    )
    m.add_argument("--json", type=Path, default=None, help="write the full report here")
    m.add_argument("--plot", type=Path, default=None, help="write PNG plots into this directory")
    m.add_argument("--quiet", action="store_true", help="no progress bar")
    add_config_flags(
        m,
        skip=("--model",),  # here: the model name requests carry; the server's is --model-path
        title="the local server's engine, without --url (default remote tier: a fresh directory)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m radixkv.bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("trace", help="replay a Mooncake-format trace through the real cache")
    t.add_argument(
        "--trace", required=True, type=Path, help="a .jsonl trace (see shared/traces/README.md)"
    )
    t.add_argument(
        "--device-frac", type=float, default=0.05, help="device tier as a fraction of unique tokens"
    )
    t.add_argument("--host-frac", type=float, default=0.20, help="host tier (0 disables)")
    t.add_argument("--remote-frac", type=float, default=0.0, help="remote tier (0 disables)")
    t.add_argument(
        "--remote-url",
        default=None,
        help="the remote tier's store (redis://..., file:///...); default: a fresh file store",
    )
    t.add_argument("--no-bound", action="store_true", help="skip the offline next-use bound")
    t.add_argument(
        "--policy",
        default="adaptive,lru",
        help="eviction policies, comma-separated (the first fills the top-level JSON fields)",
    )
    t.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    t.add_argument(
        "--sample-conversations",
        type=int,
        default=1,
        metavar="K",
        help="keep one conversation in K (what one of K engines behind a session-sticky router "
        "sees): the trace's reuse at 1/K of its load",
    )
    t.add_argument(
        "--check-every", type=int, default=0, help="run check_integrity() every N requests"
    )
    timed = t.add_argument_group(
        "timed replay (--timed): requests at their timestamps on a simulated clock, each one's "
        "TTFT modelled from its hits by tier (radixkv/bench/timed.py)"
    )
    timed.add_argument("--timed", action="store_true", help="model each request's TTFT")
    timed.add_argument("--time-scale", type=float, default=1.0, help="x the trace's timestamps")
    timed.add_argument("--prefill-tokens-per-s", type=float, default=41_889.0)
    timed.add_argument(
        "--attention-pairs-per-s",
        type=float,
        default=float("inf"),
        help="prefill's attention term: (query, key) token pairs a second, all layers (default: "
        "not charged; `trace --engine --mode timed` prints the engine's measured value)",
    )
    timed.add_argument("--kv-bytes-per-token", type=int, default=131_072)
    timed.add_argument("--h2d-gbps", type=float, default=50.7, help="host -> device GB/s")
    timed.add_argument("--remote-gbps", type=float, default=10.0, help="remote -> host GB/s")
    timed.add_argument("--remote-latency-ms", type=float, default=1.0, help="per remote read")
    timed.add_argument(
        "--remote-timing",
        choices=("model", "measured"),
        default="model",
        help="a remote read's fixed cost: the latency flag (model), or what the real store took "
        "for that read in this replay (measured; its bytes still at the GB/s flag)",
    )
    timed.add_argument(
        "--prefetch",
        action="store_true",
        help="run each policy a second time with the prefetcher on (radixkv/cache/prefetch/prefetcher.py)",
    )
    t.add_argument("--json", type=Path, default=None, help="write results here")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    add_engine_flags(t)
    add_config_flags(
        t,
        only=("page_size", "write_policy", "remote_admission"),
        title="cache options (EngineConfig)",
    )
    _add_multiturn(sub)
    add_fleet_command(sub)
    args = parser.parse_args(argv)
    args.command_line = "python -m radixkv.bench " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "multiturn":
            return _multiturn_command(args)
        if args.command == "fleet":
            return fleet_command(args)
        if not args.trace.is_file():
            parser.error(f"--trace {args.trace}: no such file")
        return _trace_command(args)
    except ValueError as err:
        parser.error(str(err))
    return 2


if __name__ == "__main__":
    sys.exit(main())
