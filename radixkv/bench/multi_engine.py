"""The multi-engine benchmark: N radixkv engines behind the SMG gateway, the multi-turn workload
sent through the gateway, one routing configuration after another in one run (fresh engines
each time, so no configuration inherits another's cache).

A configuration is a gateway policy and whether the engines share a Redis tier:
round robin, round robin + shared tier, cache-aware, cache-aware + shared tier, and sticky
(SMG's consistent hashing on the conversation's routing key) + shared tier. Per configuration it
reports the cached share of prompt tokens by the tier that held them, each engine's requests
(the balance) and its own hit rate by tier, TTFT p50/p90 and requests/s.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path

from radixkv.bench.fleet import Fleet
from radixkv.bench.multiturn import run_multiturn
from radixkv.bench.multiturn_spec import MultiturnSpec

TIERS = ("device", "host", "remote")


@dataclass(frozen=True)
class RoutingConfig:
    name: str
    policy: str  # SMG's --policy
    shared_tier: bool
    prefill: int = 0  # engines that only prefill (SMG's prefill/decode mode); 0: none


CONFIGS = {
    c.name: c
    for c in (
        RoutingConfig("round_robin", "round_robin", False),
        RoutingConfig("round_robin+shared", "round_robin", True),
        RoutingConfig("cache_aware", "cache_aware", False),
        RoutingConfig("cache_aware+shared", "cache_aware", True),
        RoutingConfig("sticky+shared", "consistent_hashing", True),
        # one prefill engine, the others decode, the prompts' pages handed over through Redis
        RoutingConfig("prefill_decode+shared", "round_robin", True, prefill=1),
    )
}
DEFAULT_CONFIGS = ",".join(n for n, c in CONFIGS.items() if not c.prefill)


def parse_configs(text: str) -> list[RoutingConfig]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown or not names:
        raise ValueError(f"--configs: unknown {unknown}; choose from {', '.join(CONFIGS)}")
    return [CONFIGS[n] for n in names]


def run_config(
    config: RoutingConfig,
    engines: int,
    serve_args: list[str],
    spec: MultiturnSpec,
    workdir: Path,
    progress: bool = True,
) -> dict:
    """Start the fleet, run the workload through its gateway, read each engine's cache."""
    import httpx

    with Fleet(
        workdir / config.name,
        engines,
        config.policy,
        serve_args,
        shared_tier=config.shared_tier,
        prefill=config.prefill,
    ) as fleet:
        url = fleet.gateway.url + "/v1"
        report = asyncio.run(run_multiturn(url, spec, progress=progress))
        per_engine = []
        for i, server in enumerate(fleet.servers):
            stats = httpx.get(server.url + "/cache/stats", timeout=30).json()
            per_engine.append(
                {
                    "engine": i,
                    "url": server.url,
                    "requests": stats["scheduler"]["finished_requests"],
                    "token_hit_rate": stats["token_hit_rate"],
                    "hit_rate_by_tier": stats["hit_rate_by_tier"],
                    "tokens_queried": stats["counters"]["tokens_queried"],
                    "role": stats["scheduler"].get("role", "both"),
                    "handoffs": stats["scheduler"].get("handoffs"),
                    "remote_bytes_read": (stats["remote"] or {})
                    .get("traffic", {})
                    .get("bytes_read", 0),
                }
            )
        warnings = fleet.gateway.discovery_warnings()
    records = [r for r in report["records"] if r["ok"]]
    prompt = sum(r["prompt_tokens"] or 0 for r in records)
    by_tier = {
        t: sum((r["cached_by_tier"] or {}).get(t, 0) for r in records) / max(prompt, 1)
        for t in TIERS
    }
    o = report["overall"]
    return {
        "config": config.name,
        "policy": config.policy,
        "shared_tier": config.shared_tier,
        "requests": o["requests"],
        "failed": o["failed"],
        "hit_rate": sum(by_tier.values()),
        "hit_rate_by_tier": by_tier,
        "ttft_p50_s": o["ttft_s"]["p50"],
        "ttft_p90_s": o["ttft_s"]["p90"],
        "tpot_p50_s": o["itl_s"]["p50"],
        "requests_per_s": o.get("requests_per_s"),
        "engines": per_engine,
        "gateway_discovery_warnings": warnings,
        "errors": report["errors"],
    }


def format_table(results: list[dict]) -> str:
    lines = [
        f"{'configuration':<22}{'hit':>7}{'device':>8}{'host':>7}{'remote':>8}"
        f"{'TTFT p50':>10}{'p90':>8}{'TPOT':>6}{'req/s':>7}{'fail':>6}  requests per engine"
    ]
    for r in results:
        t = r["hit_rate_by_tier"]
        balance = " / ".join(str(e["requests"]) for e in r["engines"])
        lines.append(
            f"{r['config']:<22}{r['hit_rate']:>7.1%}{t['device']:>8.1%}{t['host']:>7.1%}"
            f"{t['remote']:>8.1%}{_ms(r['ttft_p50_s']):>10}{_ms(r['ttft_p90_s']):>8}"
            f"{_ms(r['tpot_p50_s']):>6}{r['requests_per_s'] or 0:>7.2f}{r['failed']:>6}  {balance}"
        )
    lines.append(
        "hit: cached share of prompt tokens (by the tier that held them); TTFT and TPOT (time "
        "per output token, p50) in ms; a prefill engine's requests are its one-token answers"
    )
    for r in results:
        for e in r["engines"]:
            h = e["handoffs"]
            if h is not None:
                lines.append(
                    f"{r['config']}: decode engine {e['engine']} took {h['tokens']:,} prompt "
                    f"tokens from the shared tier ({e['remote_bytes_read'] / 1e6:,.1f} MB read) "
                    f"in {h['completed']} handoffs, {h['timed_out']} timed out, waiting "
                    f"{h['wait_s'] / max(h['completed'] + h['timed_out'], 1) * 1000:,.0f} ms each "
                    "on average"
                )
    lines.append("\neach engine's own token hit rate (device / host / remote):")
    for r in results:
        engines = "   ".join(
            f"e{e['engine']}: "
            + "/".join(f"{e['hit_rate_by_tier'][t]:.0%}" for t in TIERS)
            + f" of {e['tokens_queried']:,} tok"
            for e in r["engines"]
        )
        lines.append(f"{r['config']:<22}{engines}")
    for r in results:
        for w in r["gateway_discovery_warnings"]:
            lines.append(f"gateway warning ({r['config']}): {w}")
        for e in r["errors"]:
            lines.append(f"error ({r['config']}): {e}")
    return "\n".join(lines)


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:,.0f}"


def plot(results: list[dict], path: Path) -> Path:
    """Hit rate by tier (stacked) and TTFT p50 per configuration, and each engine's requests."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["config"] for r in results]
    x = range(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    bottom = [0.0] * len(names)
    for tier in TIERS:
        vals = [r["hit_rate_by_tier"][tier] * 100 for r in results]
        ax1.bar(x, vals, bottom=bottom, label=f"{tier} hit")
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax1.set(ylabel="cached prompt tokens (%)", ylim=(0, 100), title="Hit rate by tier, TTFT p50")
    ax1.set_xticks(list(x), names, rotation=20, ha="right")
    twin = ax1.twinx()
    twin.plot(x, [(r["ttft_p50_s"] or 0) * 1000 for r in results], "ko-", label="TTFT p50")
    twin.set(ylabel="TTFT p50 (ms)", ylim=(0, None))
    ax1.legend(loc="upper left", fontsize=8)
    twin.legend(loc="upper right", fontsize=8)
    engines = len(results[0]["engines"])
    width = 0.8 / engines
    for e in range(engines):
        ax2.bar(
            [i + e * width for i in x],
            [r["engines"][e]["requests"] for r in results],
            width,
            label=f"engine {e}",
        )
    ax2.set(ylabel="requests", title="Requests per engine (balance)")
    ax2.set_xticks([i + width * (engines - 1) / 2 for i in x], names, rotation=20, ha="right")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(
    configs: list[RoutingConfig],
    engines: int,
    serve_args: list[str],
    spec: MultiturnSpec,
    workdir: Path,
    progress: bool = True,
) -> list[dict]:
    results = []
    for config in configs:
        print(
            f"--- {config.name}: {engines} engines, SMG --policy {config.policy}", file=sys.stderr
        )
        results.append(run_config(config, engines, serve_args, spec, workdir, progress))
    return results


# CPU defaults, a few minutes in all: tiers far smaller than the conversations, so one engine's
# device + host tiers hold about half of what the clients' conversations need
DEFAULT_SERVE_ARGS = "--kv-memory-gb 0.03 --host-memory-gb 0.06 --max-running 8"


def add_fleet_command(sub) -> None:
    from radixkv.bench.multiturn_spec import add_workload_flags

    f = sub.add_parser(
        "fleet",
        help="N engines behind the SMG gateway (pip install smg): routing configurations "
        "compared on the multi-turn workload in one run",
    )
    f.add_argument("--engines", type=int, default=2, help="radixkv servers behind the gateway")
    f.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help=f"comma-separated, in order (default: {DEFAULT_CONFIGS})",
    )
    f.add_argument(
        "--serve-args",
        default=DEFAULT_SERVE_ARGS,
        help=f"every engine's arguments (default: {DEFAULT_SERVE_ARGS!r})",
    )
    add_workload_flags(
        f, clients=24, rounds=3, system_tokens=160, question_tokens=32, output_tokens=8
    )
    f.add_argument("--workdir", type=Path, default=None, help="logs (default: a temp dir)")
    f.add_argument("--json", type=Path, default=None, help="write the results here")
    f.add_argument("--plot", type=Path, default=None, help="write the PNG here")
    f.add_argument("--quiet", action="store_true", help="no progress bars")


def fleet_command(args) -> int:
    import json
    import shlex
    import tempfile

    from radixkv.bench.multiturn_spec import spec_from_args

    if args.engines < 1:
        raise ValueError(f"--engines must be >= 1, got {args.engines}")
    configs = parse_configs(args.configs)
    spec = spec_from_args(args)
    serve_args = shlex.split(args.serve_args)
    print(
        f"fleet: {args.engines} engines ({args.serve_args}); {spec.clients} conversations x "
        f"{spec.rounds} turns, system {spec.system_tokens} / question {spec.question_tokens} / "
        f"output {spec.output_tokens} tokens",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="radixkv-fleet-") as tmp:
        workdir = args.workdir or Path(tmp)
        results = run(configs, args.engines, serve_args, spec, workdir, not args.quiet)
    print(format_table(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "spec": vars(args) | {"json": None, "plot": None, "workdir": None},
                    "results": results,
                },
                indent=2,
                default=str,
            )
        )
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        print(f"wrote {plot(results, args.plot)}", file=sys.stderr)
    return 0 if all(r["failed"] == 0 for r in results) else 1
