"""Eviction policies side by side on the shared Mooncake traces (issue: cache core).

Runs `python -m radixkv.bench trace` for both traces at device 2/5/10/20% alone and device 2% /
host 10%, device 5% / host 20% of unique tokens, no remote tier, and prints one table: each
policy's token hit rate, the offline next-use bound on the same capacities, the never-evicting
ceiling, and the default policy's margin over LRU. `--trace` picks one trace (two processes can
then split the work).

    python benchmarks/trace_policies.py [--traces DIR] [--out DIR] [--trace conversation]
        [--policies lru,lfu,slru,workload,adaptive] [--capacities 0.02/0,0.05/0.2]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radixkv.bench.__main__ import main as bench_main
from radixkv.cache.config import CacheConfig

DEFAULT = CacheConfig.__dataclass_fields__["policy"].default  # the cache's default policy

CAPACITIES = "0.02/0,0.05/0,0.1/0,0.2/0,0.02/0.1,0.05/0.2"  # device / host fractions


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--traces", type=Path, default=here.parent / "shared" / "traces")
    p.add_argument("--out", type=Path, default=here / "out" / "trace_policies")
    p.add_argument("--policies", default="lru,lfu,slru,workload,adaptive")
    p.add_argument(
        "--capacities", default=CAPACITIES, help="device/host fractions, comma-separated"
    )
    p.add_argument("--trace", choices=["conversation", "synthetic"], default=None)
    p.add_argument("--page-size", type=int, default=16)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    capacities = [tuple(float(x) for x in c.split("/")) for c in args.capacities.split(",")]
    traces = (
        [f"mooncake_{args.trace}"]
        if args.trace
        else ["mooncake_conversation", "mooncake_synthetic"]
    )
    for trace in traces:
        for dev, host in capacities:
            out = args.out / f"{trace}_d{dev}_h{host}.json"
            bench_main(
                ["trace", "--trace", str(args.traces / f"{trace}.jsonl"), "--device-frac", str(dev), "--host-frac", str(host),
                 "--page-size", str(args.page_size), "--policy", args.policies, "--json", str(out), "--quiet"]
            )  # fmt: skip
            r = json.loads(out.read_text())
            rows.append((trace.removeprefix("mooncake_"), dev, host, r))
    names = args.policies.split(",")
    print(
        f"\n{'trace':<13}{'device':>7}{'host':>6}"
        + "".join(f"{n:>10}" for n in names)
        + f"{'bound':>9}{'ceiling':>9}  {DEFAULT} - lru"
    )
    for trace, dev, host, r in rows:
        rates = [r["policies"][n]["token_hit_rate"] for n in names]
        delta = (
            r["policies"][DEFAULT]["token_hit_rate"] - r["policies"]["lru"]["token_hit_rate"]
            if {"lru", DEFAULT} <= set(names)
            else float("nan")
        )
        print(
            f"{trace:<13}{dev:>7.0%}{host:>6.0%}"
            + "".join(f"{x:>10.4f}" for x in rates)
            + f"{r['bound_token_hit_rate']:>9.4f}{r['ceiling_token_hit_rate']:>9.4f}  {delta:+.4f}"
        )
    try:
        _plot(rows, names, args.out / f"trace_policies{'_' + args.trace if args.trace else ''}.png")
    except ImportError:
        print("(matplotlib not installed: no plot; pip install 'radixkv[bench]')", file=sys.stderr)
    return 0


def _plot(rows, names, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4.5))
    labels = [f"{t}\ndevice {d:.0%} host {h:.0%}" for t, d, h, _ in rows]
    series = [*names, "bound", "ceiling"]
    width = 0.8 / len(series)
    for i, s in enumerate(series):
        vals = [
            r["policies"][s]["token_hit_rate"] if s in names else r[f"{s}_token_hit_rate"]
            for *_, r in rows
        ]
        ax.bar([x + i * width for x in range(len(rows))], vals, width, label=s)
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(rows))], labels)
    ax.set_ylabel("token hit rate")
    ax.set_title("Eviction policies on the Mooncake traces (page size 16, no remote tier)")
    plt.setp(ax.get_xticklabels(), fontsize=7)
    ax.legend(ncol=len(series), fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
