#!/usr/bin/env bash
# The HTTP server on a GPU with llama-3-8b shapes (dummy bf16 weights) and the default model's
# tokenizer, driven over HTTP by `python -m radixkv.bench multiturn`, which starts it, in three
# configurations: prefix caching off, the radix cache on the device tier only, device + host.
# The device tier (8 GiB: ~64K tokens) is well below the working set (32 clients x ~6K tokens).
#
#   TOKENIZER=dir OUT=dir bash benchmarks/gpu_server_multiturn.sh
#
# TOKENIZER: a tokenizer directory (default: `default`, the default model's GGUF tokenizer; on a
# machine without the GGUF, save it first: python -c "from engine.model_loader import
# load_tokenizer; load_tokenizer('default', 49152).save('tok')"); OUT: the JSON reports and logs.
set -euo pipefail
OUT=${OUT:-/tmp/gpu-server-multiturn}
TOKENIZER=${TOKENIZER:-default}
mkdir -p "$OUT"
WORKLOAD=(--clients 32 --rounds 4 --system-tokens 1000 --question-tokens 1500 --output-tokens 64)
ENGINE=(--model-path llama-3-8b --tokenizer "$TOKENIZER" --device cuda --dtype bfloat16
        --kv-memory-gb 8 --remote-url none)
declare -A CONFIG=(
  [off]="--no-prefix-caching --host-memory-gb 0"
  [device]="--host-memory-gb 0"
  [device+host]="--host-memory-gb 48"
)
for name in off device device+host; do
  echo "== $name: ${CONFIG[$name]}"
  # shellcheck disable=SC2086
  python -m radixkv.bench multiturn "${WORKLOAD[@]}" "${ENGINE[@]}" ${CONFIG[$name]} \
    --json "$OUT/${name/+/_}.json" --quiet 2>&1 | tee "$OUT/${name/+/_}.log" | tail -25
done
python - "$OUT" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
print("\n| config | req/s | TTFT p50 (all) | TTFT p90 (all) | TTFT p50 rounds >= 2 | cached | preemptions |")
print("|---|---|---|---|---|---|---|")
for name in ("off", "device", "device+host"):
    r = json.loads((out / f"{name.replace('+', '_')}.json").read_text())
    o = r["overall"]
    later = [g["ttft_s"]["p50"] for k, g in r["by_round"].items() if int(k) >= 1]
    later = sorted(t for t in later if t is not None)  # a round may have streamed no text
    p50_later = later[len(later) // 2] if later else float("nan")
    sched = r.get("scheduler") or {}
    print(f"| {name} | {o['requests_per_s']:.2f} | {o['ttft_s']['p50'] * 1e3:.0f} ms | "
          f"{o['ttft_s']['p90'] * 1e3:.0f} ms | {p50_later * 1e3:.0f} ms | "
          f"{o['cached_ratio'] or 0:.1%} | {sched.get('preemptions', '?')} |")
PY
