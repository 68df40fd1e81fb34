"""The timed model against an engine replay that already ran: reads `trace --engine --mode timed
--json`'s output, rebuilds the requests it ran (the same trace arguments), and prints per
configuration the engine's TTFT beside the simulator's modelled TTFT with the model's defaults and
at the engine's measured speed (`radixkv.bench.engine_replay_command.calibrated`).

    python benchmarks/replay_model.py docs/runs/2026-12-08-h100-conversation-300.json \
        --trace ../shared/traces/mooncake_conversation.jsonl --sample-conversations 10 \
        --limit 300 --rate-scale 0.1 --max-output 16

A replay written before the JSON carried `busy_s` and `prefill_flops` (2026-12-08's) needs
`--busy-from-wall` (the engine had work the whole run: say so only when its queue never
emptied); its FLOPs per attention pair are `--flops-per-pair` (llama-3-8b's 4 x 32 layers x
4,096 by default) and its FLOPs per token are solved from the run's prefill floor.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from radixkv.bench.engine_replay import fitting, simulate
from radixkv.bench.engine_replay_command import calibrated
from radixkv.bench.timed import CostModel
from radixkv.bench.trace_replay import ReplaySpec
from radixkv.bench.tracefile import load_trace, sample_conversations


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("replay", type=Path, help="trace --engine --mode timed --json output")
    ap.add_argument("--trace", type=Path, required=True)
    ap.add_argument("--sample-conversations", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--rate-scale", type=float, required=True)
    ap.add_argument("--max-output", type=int, default=64)
    ap.add_argument("--page-size", type=int, default=16)
    ap.add_argument("--context", type=int, default=131_072, help="the model's context length")
    ap.add_argument("--policy", default="adaptive")
    ap.add_argument("--busy-from-wall", action="store_true")
    ap.add_argument("--flops-per-pair", type=float, default=4.0 * 32 * 4096)
    ap.add_argument("--kv-bytes-per-token", type=int, default=131_072, help="llama-3-8b bf16")
    args = ap.parse_args(argv)

    out = json.loads(args.replay.read_text())
    floors = out["floors"]
    if floors is None:
        raise ValueError(f"{args.replay} has no GPU floors: the model is calibrated on a GPU run")
    requests = load_trace(args.trace)
    if args.sample_conversations != 1:
        requests = sample_conversations(requests, args.sample_conversations)
    requests = requests[: args.limit]
    for name, row in out["configurations"].items():
        eng, tokens = dict(row["engine"]), row["tokens"]
        pages = {t: n // args.page_size for t, n in tokens.items()}
        runnable = fitting(requests, tokens["device"], args.context, args.max_output)
        runnable = runnable[: eng["submitted"]]
        if [r.input_length for r in runnable] != eng["per_request"]["prompt"]:
            raise ValueError(f"{name}: these trace arguments do not rebuild the replay's requests")
        if "busy_s" not in eng:
            if not args.busy_from_wall:
                raise ValueError(f"{name}: no busy_s in {args.replay}; see --busy-from-wall")
            eng["busy_s"] = eng["seconds"]
        if "prefill_flops" not in eng:  # per token: what makes the run's prefill floor
            rows = eng["per_request"]
            new = sum(p - c for p, c in zip(rows["prompt"], rows["cached"], strict=True))
            pairs = sum(
                (p * p - c * c) / 2 for p, c in zip(rows["prompt"], rows["cached"], strict=True)
            )
            flops = eng["floor_parts_s"]["prefill"] * floors["matmul_tflops"] * 1e12
            per_token = (flops - pairs * args.flops_per_pair) / new
            eng["prefill_flops"] = {"per_token": per_token, "per_pair": args.flops_per_pair}
        eng["prefill_efficiency"] = eng["floor_parts_s"]["prefill"] / eng["busy_s"]
        spec = ReplaySpec(
            args.page_size, pages["device"], pages["host"], pages["remote"], args.policy
        )
        base = CostModel(
            kv_bytes_per_token=args.kv_bytes_per_token,
            time_scale=args.rate_scale,
            h2d_gbps=floors["h2d_pinned_gbps"],
        )
        q = eng["ttft_ms"]
        print(
            f"{name}: {len(runnable)} requests; engine TTFT p50/p90/p99 "
            f"{q['p50']:,.0f}/{q['p90']:,.0f}/{q['p99']:,.0f} ms"
        )
        measured = calibrated(base, eng, floors)
        for label, cost in (("defaults", base), ("at the engine's measured speed", measured)):
            m = simulate(runnable, spec, cost)["ttft_ms"]
            print(
                f"  model, {label} ({cost.prefill_tokens_per_s:,.0f} tokens/s, "
                f"{cost.attention_pairs_per_s:.3g} pairs/s): {m['p50']:,.0f}/{m['p90']:,.0f}/"
                f"{m['p99']:,.0f} ms; engine / model p50 {q['p50'] / m['p50']:.2f}x, "
                f"p90 {q['p90'] / m['p90']:.2f}x, p99 {q['p99'] / m['p99']:.2f}x"
            )
        print(
            f"  prefill at {eng['prefill_efficiency']:.1%} of the measured matmul peak over "
            f"{eng['busy_s']:.1f} s busy; {eng['prefill_flops']['per_token']:.4g} FLOPs a token"
        )


if __name__ == "__main__":
    main()
