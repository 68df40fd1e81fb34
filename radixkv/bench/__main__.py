"""`python -m radixkv.bench trace --trace FILE ...`: trace replay through the real cache."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _trace_command(args: argparse.Namespace) -> int:
    from radixkv.bench.trace_replay import ReplaySpec, capacities, replay
    from radixkv.bench.tracefile import NextUseOracle, ceiling_hit_tokens, load_trace, unique_tokens

    requests = load_trace(args.trace, limit=args.limit)
    unique = unique_tokens(requests)
    dev, host, remote = capacities(
        unique, args.page_size, args.device_frac, args.host_frac, args.remote_frac
    )
    total = sum(r.input_length for r in requests)
    ceiling = ceiling_hit_tokens(requests, args.page_size) / total
    print(
        f"{args.trace}: {len(requests):,} requests, {total:,} input tokens, {unique:,} unique; "
        f"page size {args.page_size}; device {dev:,} pages, host {host:,}, remote {remote:,}; "
        f"write policy {args.write_policy}",
        file=sys.stderr,
    )
    results = {}
    for policy in args.policy.split(","):
        spec = ReplaySpec(args.page_size, dev, host, remote, policy, args.write_policy)
        results[policy] = replay(
            requests, spec, progress=not args.quiet, check_every=args.check_every
        )
    bound = replay(
        requests,
        ReplaySpec(args.page_size, dev, host, remote, "lru", args.write_policy),
        oracle=NextUseOracle(requests),
        progress=not args.quiet,
    )

    rows = [*results.items(), ("offline next-use", bound)]
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
    first = results[args.policy.split(",")[0]]
    out = {
        "trace": str(args.trace),
        "requests": len(requests),
        "input_tokens": total,
        "unique_tokens": unique,
        "page_size": args.page_size,
        "capacity_pages": {"device": dev, "host": host, "remote": remote},
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
        "bound_token_hit_rate": bound["token_hit_rate"],
        "policies": results,
        "bound": bound,
    }
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


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
    t.add_argument("--remote-frac", type=float, default=0.0, help="remote file tier (0 disables)")
    t.add_argument("--page-size", type=int, default=16)
    t.add_argument(
        "--policy",
        default="workload,lru",
        help="eviction policies, comma-separated (the first fills the top-level JSON fields)",
    )
    t.add_argument(
        "--write-policy",
        default="write_through",
        choices=["write_through", "write_through_selective", "write_back"],
    )
    t.add_argument("--limit", type=int, default=None, help="replay only the first N requests")
    t.add_argument(
        "--check-every", type=int, default=0, help="run check_integrity() every N requests"
    )
    t.add_argument("--json", type=Path, default=None, help="write results here")
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        if not args.trace.is_file():
            parser.error(f"--trace {args.trace}: no such file")
        return _trace_command(args)
    except ValueError as err:
        parser.error(str(err))
    return 2


if __name__ == "__main__":
    sys.exit(main())
