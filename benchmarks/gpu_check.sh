#!/usr/bin/env bash
# One GPU machine call that checks the GPU paths and measures them (a fresh GPU machine is bare
# and is taken back when idle, so everything goes in one call). Prepare on this machine first:
#   bash ../shared/gpu/wheels.sh pytest==9.1.1 pluggy==1.7.0 iniconfig==2.3.1 Pygments==2.21.0 \
#     hypothesis==6.170.27 sortedcontainers==2.4.0 attrs==26.1.0   # the image has no pytest
#   mkdir -p .traces && cp ../shared/traces/*.jsonl .traces/   # ignored by git: carried
# then run `bash benchmarks/gpu_check.sh` there, carrying .whl and .traces. It writes under $OUT:
# logs/ (pip, gpu, pytest_gpu, gpu_engine, replay, times), gpu_engine.json, replay.json, and the
# flashinfer JIT cache split into fi_cache.tgz.part* (under 16 MB each: carry them back next
# time and untar into ~/.cache to skip the kernels' compile).
# GPU_CHECK_SECONDS (default 560) bounds the whole call; the trace replay gets what is left.
set -u
OUT=${OUT:-/tmp/gpu_check}
L=$OUT/logs
mkdir -p "$L"
T0=$(date +%s)
left() { echo $(( ${GPU_CHECK_SECONDS:-560} - ($(date +%s) - T0) )); }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/*.whl > "$L/pip.txt" 2>&1
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
if ls fi_cache.tgz.part* > /dev/null 2>&1; then
  mkdir -p ~/.cache && cat fi_cache.tgz.part* | tar xzf - -C ~/.cache
fi
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv > "$L/gpu.txt"
timeout 150 python3 -m pytest -m gpu -q -rfEs -p no:cacheprovider tests/test_gpu_tiers.py \
  tests/test_gpu_attention.py tests/test_gpu_fast_path.py tests/test_engine.py \
  > "$L/pytest_gpu.txt" 2>&1
echo "pytest rc $? at $(( $(date +%s) - T0 )) s" >> "$L/times.txt"
timeout 220 python3 benchmarks/gpu_engine.py --skip-hf --json "$OUT/gpu_engine.json" \
  > "$L/gpu_engine.txt" 2>&1
echo "gpu_engine rc $? at $(( $(date +%s) - T0 )) s" >> "$L/times.txt"
tar czf - -C ~/.cache flashinfer 2> /dev/null | split -b 15m - "$OUT/fi_cache.tgz.part"
if [ "$(left)" -gt 60 ] && [ -f .traces/mooncake_conversation.jsonl ]; then
  timeout "$(left)" python3 -m radixkv.bench trace --trace .traces/mooncake_conversation.jsonl \
    --engine --model llama-3-8b --device cuda --mode sequential --limit "${GPU_CHECK_REQUESTS:-100}" \
    --device-frac 0.05 --host-frac 0.1 --remote-frac 0.15 --max-output 16 \
    --json "$OUT/replay.json" > "$L/replay.txt" 2>&1
  echo "replay rc $? at $(( $(date +%s) - T0 )) s" >> "$L/times.txt"
fi
cat "$L/times.txt"
