"""The multi-turn benchmark's report: percentiles per round and overall, the text table and the
plots (TTFT CDF, TTFT by round, cache hit ratio by round)."""

from __future__ import annotations

import math
from dataclasses import asdict

from radixkv.bench.multiturn_spec import MultiturnSpec, RequestRecord


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0..100), linear interpolation; None for no values."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _latency(values: list[float]) -> dict:
    return {
        "mean": sum(values) / len(values) if values else None,
        **{f"p{q}": percentile(values, q) for q in (50, 90, 99)},
    }


def _group(records: list[RequestRecord], duration: float | None) -> dict:
    ok = [r for r in records if r.ok]
    prompt = sum(r.prompt_tokens or 0 for r in ok)
    reported = [r for r in ok if r.cached_tokens is not None and r.prompt_tokens]
    out = {
        "requests": len(records),
        "failed": len(records) - len(ok),
        "ttft_s": _latency([r.ttft_s for r in ok if r.ttft_s is not None]),
        "itl_s": _latency([x for r in ok for x in r.itl_s]),
        "e2e_s": _latency([r.e2e_s for r in ok if r.e2e_s is not None]),
        "prompt_tokens": prompt,
        "completion_tokens": sum(r.completion_tokens or 0 for r in ok),
        "cached_tokens": sum(r.cached_tokens or 0 for r in reported),
        # None when the server does not report cached tokens
        "cached_ratio": (
            sum(r.cached_tokens for r in reported) / sum(r.prompt_tokens for r in reported)
            if reported
            else None
        ),
    }
    if duration:
        out["input_tokens_per_s"] = prompt / duration
        out["output_tokens_per_s"] = out["completion_tokens"] / duration
        out["requests_per_s"] = len(ok) / duration
    return out


def summarize(records: list[RequestRecord], spec: MultiturnSpec, duration: float, **meta) -> dict:
    rounds = sorted({r.round for r in records})
    return {
        **meta,
        "spec": asdict(spec),
        "duration_s": duration,
        "overall": _group(records, duration),
        "by_round": {r: _group([x for x in records if x.round == r], None) for r in rounds},
        "errors": sorted({r.error for r in records if r.error}),
        "records": [asdict(r) for r in records],
    }


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1000:,.0f}"


def format_report(report: dict) -> str:
    """The per-round and overall table, as text."""
    lines = [
        f"{'round':>6}{'reqs':>6}{'fail':>6}{'TTFT p50':>10}{'p90':>8}{'p99':>8}{'ITL p50':>9}"
        f"{'p99':>7}{'E2E p50':>9}{'prompt':>9}{'cached':>8}"
    ]

    def row(name, g):
        ratio = "-" if g["cached_ratio"] is None else f"{g['cached_ratio']:.1%}"
        return (
            f"{name:>6}{g['requests']:>6}{g['failed']:>6}{_ms(g['ttft_s']['p50']):>10}"
            f"{_ms(g['ttft_s']['p90']):>8}{_ms(g['ttft_s']['p99']):>8}{_ms(g['itl_s']['p50']):>9}"
            f"{_ms(g['itl_s']['p99']):>7}{_ms(g['e2e_s']['p50']):>9}{g['prompt_tokens']:>9,}{ratio:>8}"
        )

    for r, g in report["by_round"].items():
        lines.append(row(str(int(r) + 1), g))
    o = report["overall"]
    lines.append(row("all", o))
    lines.append(
        f"latencies in ms. {report['duration_s']:.1f} s; input {o['input_tokens_per_s']:,.0f} tok/s, "
        f"output {o['output_tokens_per_s']:,.1f} tok/s, {o['requests_per_s']:.2f} req/s"
    )
    sched = report.get("scheduler")
    if sched:
        lines.append(f"server: {sched['preemptions']} preemptions")
    for e in report["errors"]:
        lines.append(f"error: {e}")
    return "\n".join(lines)


def plot_report(report: dict, out_dir) -> list:
    """PNGs: TTFT CDF, TTFT by round (p50 and p90), cached ratio by round. Returns the paths."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ttfts = sorted(r["ttft_s"] * 1000 for r in report["records"] if r["ttft_s"] is not None)
    rounds = [int(r) + 1 for r in report["by_round"]]
    groups = list(report["by_round"].values())
    paths = []

    def save(fig, name: str) -> None:
        paths.append(out / name)
        fig.tight_layout()
        fig.savefig(paths[-1], dpi=120)
        plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(ttfts, [(i + 1) / len(ttfts) for i in range(len(ttfts))], drawstyle="steps-post")
    ax.set(xlabel="time to first token (ms)", ylabel="fraction of requests", title="TTFT CDF")
    ax.grid(alpha=0.3)
    save(fig, "ttft_cdf.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    for q in ("p50", "p90"):
        ax.plot(rounds, [(g["ttft_s"][q] or 0) * 1000 for g in groups], marker="o", label=q)
    ax.set(xlabel="round", ylabel="TTFT (ms)", title="TTFT by conversation round", xticks=rounds)
    ax.legend()
    ax.grid(alpha=0.3)
    save(fig, "ttft_by_round.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(rounds, [(g["cached_ratio"] or 0) * 100 for g in groups])
    ax.set(
        xlabel="round",
        ylabel="cached prompt tokens (%)",
        title="Prompt tokens served from the cache, by round",
        ylim=(0, 100),
        xticks=rounds,
    )
    ax.grid(alpha=0.3, axis="y")
    save(fig, "hit_ratio_by_round.png")
    return paths
