"""One table from several `trace --engine --json` runs: each GPU call can run one configuration
(a 1,000-request replay takes most of a call), and the table puts them side by side as the
replay prints them, with each run's command.

    python benchmarks/replay_table.py device.json device+host.json [--markdown]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radixkv.bench.engine_replay import EngineReplaySpec
from radixkv.bench.engine_replay_command import format_engine_table


def merged(paths: list[Path]) -> tuple[dict, EngineReplaySpec, list[str]]:
    """The configurations of every run (a name met twice is refused), the run spec they share
    (mode and TTFT bound; runs of other modes or bounds are refused) and their commands."""
    rows: dict = {}
    spec, commands = None, []
    for path in paths:
        out = json.loads(path.read_text())
        if "run" not in out:
            raise ValueError(f"{path}: no 'run' in it (written before 2026-12-08's replays?)")
        run = EngineReplaySpec(**out["run"])
        if spec is not None and (run.mode, run.ttft_bound_ms) != (spec.mode, spec.ttft_bound_ms):
            raise ValueError(
                f"{path}: mode {run.mode}, bound {run.ttft_bound_ms} ms, unlike {paths[0]}"
            )
        spec = spec or run
        for name, row in out["configurations"].items():
            if name in rows:
                raise ValueError(f"{path}: configuration {name!r} is in an earlier file too")
            rows[name] = row
        commands.append(f"{path}: {out.get('command') or '(command not recorded)'}")
    if spec is None:
        raise ValueError("no replay JSON given")
    return rows, spec, commands


def markdown(rows: dict) -> str:
    """The table's main figures as Markdown."""
    head = (
        "| configuration | tiers (tokens) | engine hit | sim hit | TTFT p50/p90/p99 ms | TPOT ms "
        "| req/s | in bound | wall s | floor s | x floor |\n|" + "---|" * 11
    )
    lines = [head]
    for name, r in rows.items():
        e, s, t = r["engine"], r["simulator"], r["tokens"]
        q = e["ttft_ms"]
        floor = f"{e['floor_s']:.1f} | {e['ratio_to_floor']:.2f}" if "floor_s" in e else "- | -"
        lines.append(
            f"| {name} | {t['device']:,}/{t['host']:,}/{t['remote']:,} | "
            f"{e['token_hit_rate']:.2%} | {s['token_hit_rate']:.2%} | "
            f"{q['p50']:,.0f}/{q['p90']:,.0f}/{q['p99']:,.0f} | {e['tpot_ms']['p50']:.1f} | "
            f"{e['requests_per_s']:.2f} | {e['within_ttft_bound']:.0%} | {e['seconds']:.1f} | "
            f"{floor} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, nargs="+", help="trace --engine --json outputs")
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    args = ap.parse_args(argv)
    try:
        rows, spec, commands = merged(args.runs)
    except ValueError as err:
        ap.error(str(err))
    print(format_engine_table(rows, spec))
    print("\n".join(commands))
    if args.markdown:
        print("\n" + markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
