"""Eviction policies side by side on the shared Mooncake traces (issue: cache core).

Runs `python -m radixkv.bench trace` for both traces at device 5% / host 20% and device 2% /
host 10% of unique tokens, no remote tier, and prints one table: each policy's token hit rate,
the offline next-use bound on the same capacities, and the never-evicting ceiling.

    python benchmarks/trace_policies.py [--traces DIR] [--out DIR] [--policies lru,lfu,slru,workload]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from radixkv.bench.__main__ import main as bench_main

CAPACITIES = [(0.05, 0.20), (0.02, 0.10)]


def main() -> int:
    here = Path(__file__).resolve().parent.parent
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--traces", type=Path, default=here.parent / "shared" / "traces")
    p.add_argument("--out", type=Path, default=here / "out" / "trace_policies")
    p.add_argument("--policies", default="lru,lfu,slru,workload")
    p.add_argument("--page-size", type=int, default=16)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for trace in ("mooncake_conversation", "mooncake_synthetic"):
        for dev, host in CAPACITIES:
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
        + f"{'bound':>9}{'ceiling':>9}  default - lru"
    )
    for trace, dev, host, r in rows:
        rates = [r["policies"][n]["token_hit_rate"] for n in names]
        delta = (
            r["policies"]["workload"]["token_hit_rate"] - r["policies"]["lru"]["token_hit_rate"]
            if {"lru", "workload"} <= set(names)
            else float("nan")
        )
        print(
            f"{trace:<13}{dev:>7.0%}{host:>6.0%}"
            + "".join(f"{x:>10.4f}" for x in rates)
            + f"{r['bound_token_hit_rate']:>9.4f}{r['ceiling_token_hit_rate']:>9.4f}  {delta:+.4f}"
        )
    try:
        _plot(rows, names, args.out / "trace_policies.png")
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
    ax.legend(ncol=len(series), fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
