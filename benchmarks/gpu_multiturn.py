"""GPU multi-turn benchmark through the engine: C clients x R rounds, closed loop, four configs.

Each client holds a conversation over a shared system prompt and a document of its own
(thousands of tokens); every round resends the whole context plus a new question and waits
for the answer before its next round. The device tier is sized well below the working set.
Configurations, one engine each, in one run:

    off          prefix caching off (every prompt recomputed)
    device       the radix cache on the device tier only
    device+host  device and host tiers
    +remote      device, host and a file remote tier
    device+host+prefetch  device and host, the prefetcher promoting returning conversations
                 (each client's requests carry its session id; use --think-s; not run by default)

With `--kv-cache-dtypes auto,fp8_e4m3` every configuration runs once per KV page dtype (float8
pages: the same GiB hold twice the tokens), named e.g. `device+host fp8_e4m3`.

Printed per configuration: the tokens the device tier holds, duration, requests/s, TTFT
p50/p90 (all rounds and rounds >= 2), cached fraction by tier, preemptions, the run's floor
(`run_floor`: prefill FLOPs at the measured bf16 matmul peak + decode steps at the weight-read
floor, as many as the device tier forces + the KV decode reads + host-loaded KV at the measured
pinned H2D bandwidth) with the ratio to it, where the engine thread's time went (`StepTimes`),
and with a remote tier its pages not written (write backlog full), failed writes and how often
it was marked down.

    python benchmarks/gpu_multiturn.py [--clients 32] [--rounds 4] [--doc-tokens 4000] ...
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from radixkv.bench.floors import Work, measure_floors, weight_bytes, work_floor

CONFIGS = {
    "off": dict(prefix_caching=False, host_memory_gb=0, remote_url=None),
    "device": dict(host_memory_gb=0, remote_url=None, prefetch_pages=0),
    "device+host": dict(remote_url=None, prefetch_pages=0),
    "+remote": dict(prefetch_pages=0),
    # the prefetcher on (it promotes returning sessions: measure with --think-s)
    "device+host+prefetch": dict(remote_url=None),
    # device + host with each step read before the next is planned (overlap scheduling off)
    "device+host-serial": dict(remote_url=None, prefetch_pages=0, overlap_schedule="off"),
    # device + host without the few-token Triton kernels (on by default on CUDA)
    "device+host-triton-off": dict(remote_url=None, prefetch_pages=0, triton_kernels="off"),
}


async def run_clients(eng, args, rng: random.Random) -> list[dict]:
    vocab = eng.model.config.vocab_size

    def words(n: int) -> list[int]:
        return [rng.randrange(1000, vocab - 1000) for _ in range(n)]

    system = words(args.system_tokens)
    docs = [words(args.doc_tokens) for _ in range(args.clients)]
    records: list[dict] = []
    t0 = time.perf_counter()

    async def client(c: int) -> None:
        context = system + docs[c]
        for r in range(args.rounds):
            context = context + words(args.question_tokens)
            req = eng.make_request(
                context, max_tokens=args.output_tokens, ignore_eos=True, session=f"client-{c}"
            )
            sent, first, out_ids, final = time.perf_counter(), None, [], None
            async for out in eng.loop.generate(req):
                if first is None and out.new_token_ids:
                    first = time.perf_counter()
                out_ids += out.new_token_ids
                final = out
            records.append(
                {
                    "client": c,
                    "round": r,
                    "sent_s": sent - t0,
                    "ttft_s": first - sent,
                    "latency_s": time.perf_counter() - sent,
                    "prompt_tokens": final.prompt_tokens,
                    "cached": dict(final.cached_by_tier),
                    "output_tokens": len(out_ids),
                }
            )
            context = context + out_ids
            if args.think_s:
                await asyncio.sleep(args.think_s)

    await asyncio.gather(*(client(c) for c in range(args.clients)))
    return records


class StepTimes:
    """Where the engine thread's time goes: wraps the core's step and, inside it, scheduling
    (a continued decode step's planning included) and output handling (a benchmark's
    instrument; the engine is unchanged). The rest of a step is its forward: launching it and
    waiting for its tokens, host loads included (per-layer waits inside it). With overlap
    scheduling a step's wait is for the step queued one call before, and it is counted as the
    kind of the batch whose outputs the call applies."""

    def __init__(self, core) -> None:
        self.schedule_s = self.outputs_s = 0.0
        self.forward_s = {"decode": 0.0, "prefill": 0.0}  # prefill: any prompt tokens in it
        self.steps = {"decode": 0, "prefill": 0}
        self.prefill_tokens = self.decode_tokens = 0
        sched = core.scheduler
        step, schedule, cont, process = (
            core.step,
            sched.schedule,
            sched.continue_decode,
            sched.process_outputs,
        )
        inner = [0.0, None]  # this step's scheduling + output seconds, the kind it applied

        def timed(fn, field):
            def wrapper(*a, **k):
                t = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    dt = time.perf_counter() - t
                    setattr(self, field, getattr(self, field) + dt)
                    inner[0] += dt

            return wrapper

        timed_process = timed(process, "outputs_s")

        def counted_process(batch, *a, **k):
            n, rows = len(batch.forward.input_ids), batch.forward.num_sequences
            kind = "decode" if n == rows else "prefill"
            inner[1] = kind
            self.steps[kind] += 1
            self.decode_tokens += rows if kind == "decode" else 0
            self.prefill_tokens += n if kind == "prefill" else 0
            return timed_process(batch, *a, **k)

        def timed_step():
            inner[:] = [0.0, None]
            t = time.perf_counter()
            try:
                return step()
            finally:
                if inner[1] is not None:
                    self.forward_s[inner[1]] += time.perf_counter() - t - inner[0]

        core.step = timed_step
        sched.schedule = timed(schedule, "schedule_s")
        sched.continue_decode = timed(cont, "schedule_s")
        sched.process_outputs = counted_process

    def report(self, duration: float) -> dict:
        busy = self.schedule_s + self.outputs_s + sum(self.forward_s.values())
        return {
            "schedule_s": self.schedule_s,
            "outputs_s": self.outputs_s,
            "forward_s": dict(self.forward_s),
            "steps": dict(self.steps),
            "prefill_tokens": self.prefill_tokens,
            "decode_tokens": self.decode_tokens,
            "idle_s": duration - busy,
        }


def run_floor(records, eng, floors: dict, w_bytes: int, layout, args) -> dict:
    """The least time this run's work takes on this GPU, in seconds, by part (prefill, decode
    weights, decode KV, loads: `radixkv.bench.floors`). Decode steps are at least rounds x
    output tokens (a client's tokens come one after another) and at least the output tokens /
    the most requests the device tier holds at once (a decoding request's whole context is on
    the device)."""
    cfg = eng.model.config
    outputs = sum(r["output_tokens"] for r in records)
    context = statistics.mean(r["prompt_tokens"] + r["output_tokens"] for r in records)
    pc = eng.core.prefix_cache
    at_once = max(
        1,
        min(
            args.max_running, args.clients, int(pc.device_capacity_pages * pc.page_size // context)
        ),
    )
    work = [
        Work(
            r["prompt_tokens"],
            sum(r["cached"].values()),
            r["cached"].get("host", 0) + r["cached"].get("remote", 0),
            r["output_tokens"],
        )
        for r in records
    ]
    return work_floor(
        work,
        num_layers=cfg.num_layers,
        attn_dim=cfg.num_heads * cfg.head_dim,
        w_bytes=w_bytes,
        kv_bytes_per_token=layout.page_bytes / layout.page_size,
        floors=floors,
        decode_steps=max(args.rounds * args.output_tokens, math.ceil(outputs / at_once)),
    )


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def summarize(
    name: str, records, duration: float, eng, floors: dict, w_bytes: int, layout, args
) -> dict:
    prompt = sum(r["prompt_tokens"] for r in records)
    cached = {t: sum(r["cached"].get(t, 0) for r in records) for t in ("device", "host", "remote")}
    computed = prompt - sum(cached.values())
    ttft = [r["ttft_s"] for r in records]
    later = [r["ttft_s"] for r in records if r["round"] >= 1]
    floor_parts = run_floor(records, eng, floors, w_bytes, layout, args)
    report = eng.core.cache_report()
    remote = None
    if report["remote"] is not None:  # writes shed or failed, and the breaker's record
        counters = report["counters"]
        remote = {
            "writes_shed": counters["remote_writes_shed"],
            "write_failures": counters["remote_write_failures"],
            "times_opened": report["remote"]["times_opened"],
            "last_error": report["remote"]["last_error"],
        }
    floor = sum(floor_parts.values())
    row = {
        "config": name,
        "requests": len(records),
        "duration_s": duration,
        "requests_per_s": len(records) / duration,
        "ttft_p50_ms": pct(ttft, 50) * 1e3,
        "ttft_p90_ms": pct(ttft, 90) * 1e3,
        "ttft_p50_round2plus_ms": pct(later, 50) * 1e3 if later else None,
        "ttft_p90_round2plus_ms": pct(later, 90) * 1e3 if later else None,
        "cached_fraction": {t: n / prompt for t, n in cached.items()},
        "computed_prompt_tokens": computed,
        "preemptions": eng.scheduler.preemptions,
        "continued_steps": eng.scheduler.continued_steps,
        "adopted_tokens": eng.scheduler.adopted_tokens,  # loaded between prefill chunks
        "admission_waits": eng.scheduler.admission_waits,  # steps admission stopped for memory
        "prefetch": report["prefetch"],
        "remote": remote,
        "floor_s": floor,
        "floor_parts_s": floor_parts,
        "ratio_to_floor": duration / floor,
    }
    print(
        f"{name:>12}: {duration:6.1f} s, {row['requests_per_s']:.2f} req/s, TTFT p50 "
        f"{row['ttft_p50_ms']:.0f} / p90 {row['ttft_p90_ms']:.0f} ms (rounds>=2: "
        f"{row['ttft_p50_round2plus_ms'] or 0:.0f} / {row['ttft_p90_round2plus_ms'] or 0:.0f}), "
        f"cached {', '.join(f'{t} {v:.0%}' for t, v in row['cached_fraction'].items())}, "
        f"preemptions {row['preemptions']}, floor {floor:.1f} s -> {row['ratio_to_floor']:.2f}x "
        f"(floor: {', '.join(f'{k} {v:.1f}' for k, v in floor_parts.items())})",
        flush=True,
    )
    if remote is not None:
        print(
            f"{'':>12}  remote tier: {remote['writes_shed']:,} pages not written (write backlog "
            f"full), {remote['write_failures']:,} writes failed, marked down "
            f"{remote['times_opened']} times"
            + (f" (last error: {remote['last_error']})" if remote["last_error"] else ""),
            flush=True,
        )
    pf = row["prefetch"]
    if pf["moved_pages"]:
        print(
            f"{'':>12}  prefetch: {pf['moved_pages']:,} pages moved, precision "
            f"{pf['precision']:.1%}, coverage {pf['coverage']:.1%}, {pf['wasted_pages']:,} wasted",
            flush=True,
        )
    return row


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="llama-3-8b")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--system-tokens", type=int, default=1000)
    p.add_argument("--doc-tokens", type=int, default=4000)
    p.add_argument("--question-tokens", type=int, default=100)
    p.add_argument("--output-tokens", type=int, default=64)
    p.add_argument("--think-s", type=float, default=0.0, help="pause between a client's rounds")
    p.add_argument("--kv-memory-gb", type=float, default=8.0, help="device tier")
    p.add_argument("--host-memory-gb", type=float, default=32.0, help="host tier")
    p.add_argument("--max-running", type=int, default=32)
    p.add_argument("--configs", default="off,device,device+host,+remote")
    p.add_argument(
        "--kv-cache-dtypes", default="auto", help="comma-separated; each config runs per dtype"
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    from radixkv import Engine

    floors = measure_floors(torch.device("cuda"))
    torch.cuda.empty_cache()
    rows = []
    dtypes = args.kv_cache_dtypes.split(",")
    runs = [(c, d) for d in dtypes for c in args.configs.split(",")]
    for config, kv_dtype in runs:
        name = config if len(dtypes) == 1 else f"{config} {kv_dtype}"
        tmp = tempfile.mkdtemp(prefix="radixkv-multiturn-")
        options = dict(
            device="cuda",
            kv_memory_gb=args.kv_memory_gb,
            host_memory_gb=args.host_memory_gb,
            remote_url=Path(tmp, "tier").as_uri(),
            max_running=args.max_running,
            max_batch_tokens=8192,
            kv_cache_dtype=kv_dtype,
        )
        options.update(CONFIGS[config])
        eng = Engine(args.model, **options)
        layout = eng.cache.layout
        w_bytes = weight_bytes(eng.model)
        eng.loop.start()
        eng.generate([[5] * 512], max_tokens=2)  # warm-up (through the loop: it is running)
        eng.scheduler.preemptions = eng.scheduler.continued_steps = 0
        eng.scheduler.adopted_tokens = eng.scheduler.admission_waits = 0
        times = StepTimes(eng.core)
        t = time.perf_counter()
        records = asyncio.run(run_clients(eng, args, random.Random(0)))
        duration = time.perf_counter() - t
        rows.append(summarize(name, records, duration, eng, floors, w_bytes, layout, args))
        rows[-1]["time"] = st = times.report(duration)
        rows[-1]["device_tokens"] = eng.cache.config.device_pages * layout.page_size
        print(
            f"{'':>12}  engine thread: forward {st['forward_s']['prefill']:.1f} s in "
            f"{st['steps']['prefill']} steps with prompt tokens ({st['prefill_tokens']:,}), "
            f"{st['forward_s']['decode']:.1f} s in {st['steps']['decode']} decode-only steps "
            f"({st['decode_tokens']:,} tokens); schedule {st['schedule_s']:.1f} s, outputs "
            f"{st['outputs_s']:.1f} s, idle {st['idle_s']:.1f} s; "
            f"{eng.scheduler.continued_steps} decode steps queued before the last was read; "
            f"{eng.scheduler.adopted_tokens:,} prompt tokens adopted between prefill chunks; "
            f"admission waited for memory in {eng.scheduler.admission_waits} steps",
            flush=True,
        )
        eng.close()
        eng = None
        gc.collect()
        torch.cuda.empty_cache()
    by = {r["config"]: r for r in rows}
    print(
        "\n| config | device tier tokens | duration s | req/s | TTFT p50 / p90 ms | rounds >= 2 p50 / p90 ms | cached device / host / remote | preemptions | floor s | x floor |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["cached_fraction"]
        print(
            f"| {r['config']} | {r['device_tokens']:,} | {r['duration_s']:.1f} | {r['requests_per_s']:.2f} | {r['ttft_p50_ms']:.0f} / "
            f"{r['ttft_p90_ms']:.0f} | {r['ttft_p50_round2plus_ms']:.0f} / {r['ttft_p90_round2plus_ms']:.0f} | "
            f"{c['device']:.0%} / {c['host']:.0%} / {c['remote']:.0%} | {r['preemptions']} | "
            f"{r['floor_s']:.1f} | {r['ratio_to_floor']:.2f} |"
        )
    if "device" in by and "device+host" in by:
        print(
            f"\ndevice+host vs device-only: {by['device+host']['requests_per_s'] / by['device']['requests_per_s']:.2f}x requests/s"
        )
    for config in args.configs.split(","):
        for other in dtypes[1:]:
            a, b = by.get(f"{config} {dtypes[0]}"), by.get(f"{config} {other}")
            if a and b:
                print(
                    f"{config}: {other} vs {dtypes[0]} pages: {b['requests_per_s'] / a['requests_per_s']:.2f}x "
                    f"requests/s, TTFT p50 {b['ttft_p50_ms']:.0f} vs {a['ttft_p50_ms']:.0f} ms, "
                    f"{b['device_tokens'] / a['device_tokens']:.2f}x the tokens on the device"
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "floors": floors, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
