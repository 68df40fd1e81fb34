#!/usr/bin/env bash
# One GPU machine call that checks the GPU paths and measures them (a fresh GPU machine is bare
# and is taken back when idle, so everything goes in one call). Prepare on this machine first:
#   bash ../shared/gpu/wheels.sh pytest==9.1.1 pluggy==1.7.0 iniconfig==2.3.1 Pygments==2.21.0 \
#     hypothesis==6.170.27 sortedcontainers==2.4.0 attrs==26.1.0   # the image has no pytest
#   mkdir -p .traces && cp ../shared/traces/*.jsonl .traces/   # ignored by git: carried
# then run `bash benchmarks/gpu_check.sh` there, carrying .whl and .traces (and fi_cache.tgz.part*
# from an earlier call, if any: untarred into ~/.cache, it skips flashinfer's kernel compile).
# It writes under $OUT (at most 8 files come back): check.log (every step's output, in order),
# prefix_attention.json, gpu_engine.json, gpu_kv_fp8.json, replay.json (replay2.json ... for more), the flashinfer JIT cache split
# into fi_cache.tgz.part* (under 16 MB each).
# Steps, each skipped when its variable is 0: GPU_CHECK_TESTS (pytest -m gpu over GPU_CHECK_TEST_FILES, default
# the GPU test files), GPU_CHECK_PREFIX (benchmarks/gpu_prefix_attention.py, bound GPU_CHECK_PREFIX_S, 120 s), GPU_CHECK_ENGINE
# (benchmarks/gpu_engine.py with GPU_CHECK_ENGINE_ARGS, default --skip-hf), GPU_CHECK_FP8 (benchmarks/gpu_kv_fp8.py), then the trace replay through the engine with
# GPU_CHECK_REPLAY's arguments (empty: none; several separated by ';') in what is left of GPU_CHECK_SECONDS (default 560; the replay needs a call of its own);
# GPU_CHECK_TESTS_S, GPU_CHECK_ENGINE_S and GPU_CHECK_FP8_S bound the first three (200, 300, 150 s: on an H100 on 2026-12-07
# the GPU tests took over 110 s with the kernels compiled, gpu_engine over 200).
set -u
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG=$OUT/check.log
T0=$(date +%s)
left() { echo $(( ${GPU_CHECK_SECONDS:-560} - ($(date +%s) - T0) )); }
step() { echo "== $1 at $(( $(date +%s) - T0 )) s" >> "$LOG"; }
step "install carried wheels"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/*.whl >> "$LOG" 2>&1
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
if ls fi_cache.tgz.part* > /dev/null 2>&1; then
  mkdir -p ~/.cache && cat fi_cache.tgz.part* | tar xzf - -C ~/.cache && step "flashinfer cache restored"
fi
nvidia-smi --query-gpu=name,memory.total,memory.used --format=csv >> "$LOG" 2>&1
free -g | head -2 >> "$LOG"; df -h /tmp | tail -1 >> "$LOG"
if [ "${GPU_CHECK_TESTS:-1}" != 0 ]; then
  step "pytest -m gpu"
  # shellcheck disable=SC2086  # a list of files
  timeout "${GPU_CHECK_TESTS_S:-200}" python3 -m pytest -m gpu -q -rfEs -p no:cacheprovider \
    ${GPU_CHECK_TEST_FILES:-tests/test_gpu_tiers.py tests/test_gpu_attention.py tests/test_gpu_fast_path.py \
    tests/test_gpu_fp8.py tests/test_engine.py} >> "$LOG" 2>&1
  step "pytest rc $?"
fi
if [ "${GPU_CHECK_PREFIX:-1}" != 0 ]; then
  step "gpu_prefix_attention.py"
  timeout "${GPU_CHECK_PREFIX_S:-120}" python3 benchmarks/gpu_prefix_attention.py \
    --json "$OUT/prefix_attention.json" >> "$LOG" 2>&1
  step "gpu_prefix_attention rc $?"
fi
if [ "${GPU_CHECK_ENGINE:-1}" != 0 ]; then
  step "gpu_engine.py ${GPU_CHECK_ENGINE_ARGS:=--skip-hf}"
  # shellcheck disable=SC2086  # the arguments are meant to split
  timeout "${GPU_CHECK_ENGINE_S:-300}" python3 benchmarks/gpu_engine.py $GPU_CHECK_ENGINE_ARGS \
    --json "$OUT/gpu_engine.json" >> "$LOG" 2>&1
  step "gpu_engine rc $?"
fi
if [ "${GPU_CHECK_FP8:-1}" != 0 ]; then
  step "gpu_kv_fp8.py"
  timeout "${GPU_CHECK_FP8_S:-150}" python3 benchmarks/gpu_kv_fp8.py --json "$OUT/gpu_kv_fp8.json" >> "$LOG" 2>&1
  step "gpu_kv_fp8 rc $?"
fi
# GPU_CHECK_REPLAY may hold several replays' arguments separated by ';': they run one after
# another (replay.json, replay2.json, ...), e.g. the same requests with two kernels side by side
IFS=';' read -r -a REPLAYS <<< "${GPU_CHECK_REPLAY:-}"
n=0
for replay in "${REPLAYS[@]}"; do
  [ -n "${replay// /}" ] || continue
  n=$((n + 1)); json="$OUT/replay$([ $n -gt 1 ] && echo $n).json"
  if [ "$(left)" -le 60 ]; then step "no time left for replay $n: $replay"; break; fi
  step "trace replay $n: $replay"
  # shellcheck disable=SC2086  # the arguments are meant to split
  timeout "$(left)" python3 -m radixkv.bench trace --engine --model llama-3-8b --device cuda \
    --quiet --json "$json" $replay >> "$LOG" 2>&1
  step "replay $n rc $?"
done
# the kernels compiled by every step above, for the next fresh machine
tar czf - -C ~/.cache flashinfer 2> /dev/null | split -b 15m - "$OUT/fi_cache.tgz.part"
step "done"
