"""A prefill chunk's attention over a cached prefix: flashinfer's FA2 kernel (the engine's
default for such chunks) against the Hopper kernel flashinfer's `auto` picks on an H100/H200,
through the engine's own backend (`FlashInferPagedAttention(prefix_kernel=...)`), llama-3-8b's
attention shapes (32 query heads, 8 KV heads, dim 128, 16-token pages), one layer.

1. per chunk and prefix length: both kernels' outputs compared (relative error), each timed,
   and its FLOPs (causal pairs x 4 x heads x dim) against the bf16 matmul peak measured in the
   same run;
2. a long prompt in chunks planned and run back to back on a busy stream, as the engine runs a
   prompt's middle chunks (nothing synchronises between them): every chunk of `auto` must equal
   FA2's within the first table's error.

    python benchmarks/gpu_prefix_attention.py [--chunks 2048,8192] [--prefixes 2048,8192,32768,81920] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from engine.attention.flashinfer_backend import PREFIX_KERNELS, FlashInferPagedAttention
from engine.forward_batch import ForwardBatch
from radixkv.bench.floors import cuda_time, measure_floors
from storage import DevicePool, KVLayout

HEADS, KV_HEADS, DIM, PS = 32, 8, 128, 16
TOLERANCE = 2e-2  # relative error between the two kernels' bf16 outputs


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def pool_for(tokens: int, dev: torch.device) -> DevicePool:
    pages = -(-tokens // PS) + 1
    pool = DevicePool(KVLayout(1, KV_HEADS, DIM, PS, torch.bfloat16), pages, dev)
    pool.data.normal_()
    return pool


def chunk_batch(chunk: int, prefix: int, table: list[int], dev) -> ForwardBatch:
    return ForwardBatch.build([([1] * chunk, prefix, table[: -(-(prefix + chunk) // PS)])], PS, dev)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", default="2048,8192")
    ap.add_argument("--prefixes", default="2048,8192,32768,81920")
    ap.add_argument("--prompt", type=int, default=40_960, help="part 2's prompt (tokens)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU and flashinfer")
        return 1
    dev = torch.device("cuda")
    floors = measure_floors(dev)
    peak = floors["matmul_tflops"] * 1e12
    chunks = [int(x) for x in args.chunks.split(",")]
    prefixes = [int(x) for x in args.prefixes.split(",")]
    most = max(prefixes) + max(chunks)
    free = torch.cuda.mem_get_info(dev)[0]
    need = most * 2 * KV_HEADS * DIM * 2 * 1.1
    if need > free / 2:
        raise ValueError(f"{most:,} tokens of one layer's KV need {need / 2**30:.1f} GiB: too many")
    pool = pool_for(max(most, args.prompt), dev)
    gen = torch.Generator().manual_seed(0)
    table = torch.randperm(pool.num_pages - 1, generator=gen).tolist()  # scattered pages
    fi = {
        k: FlashInferPagedAttention(pool, HEADS, KV_HEADS, DIM, prefix_kernel=k)
        for k in PREFIX_KERNELS
    }
    rows, worst = [], 0.0
    print(
        f"{'chunk':>7}{'prefix':>8}{'fa2 ms':>9}{'auto ms':>9}{'fa2 % peak':>12}"
        f"{'auto % peak':>12}{'auto/fa2':>10}{'rel err':>9}",
        flush=True,
    )
    for chunk in chunks:
        for prefix in prefixes:
            batch = chunk_batch(chunk, prefix, table, dev)
            q = torch.randn(chunk, HEADS, DIM, device=dev, dtype=torch.bfloat16)
            flops = 4 * HEADS * DIM * (chunk * prefix + chunk * (chunk + 1) / 2)
            out, ms = {}, {}
            for k, backend in fi.items():
                out[k] = backend.forward(0, q, batch).clone()
                ms[k] = (
                    cuda_time(lambda b=backend, q=q, x=batch: b.forward(0, q, x), iters=10) * 1e3
                )
            err = rel(out["auto"], out["fa2"])
            worst = max(worst, err)
            row = {
                "chunk": chunk,
                "prefix": prefix,
                "ms": ms,
                "rel_err": err,
                "share_of_peak": {k: flops / (ms[k] / 1e3) / peak for k in ms},
            }
            rows.append(row)
            s = row["share_of_peak"]
            print(
                f"{chunk:>7,}{prefix:>8,}{ms['fa2']:>9.3f}{ms['auto']:>9.3f}{s['fa2']:>12.1%}"
                f"{s['auto']:>12.1%}{ms['auto'] / ms['fa2']:>10.2f}{err:>9.1e}",
                flush=True,
            )

    # 2. the prompt's chunks back to back on a busy stream; each against FA2's
    step = chunks[0]
    starts = range(0, args.prompt - step + 1, step)
    qs = [torch.randn(step, HEADS, DIM, device=dev, dtype=torch.bfloat16) for _ in starts]
    outs = {}
    for k, backend in fi.items():
        batches = [chunk_batch(step, s, table, dev) for s in starts]
        torch.cuda.synchronize()
        torch.cuda._sleep(1_000_000_000)  # the plans' copies queue behind it
        outs[k] = [backend.forward(0, q, b) for q, b in zip(qs, batches, strict=True)]
        torch.cuda.synchronize()
    errs = [rel(a, f) for a, f in zip(outs["auto"], outs["fa2"], strict=True)]
    chain_ok = all(math.isfinite(e) and e <= max(TOLERANCE, 2 * worst) for e in errs)
    print(
        f"{len(errs)} chunks of {step:,} tokens back to back ({args.prompt:,}-token prompt): "
        f"auto against FA2, largest relative error {max(errs):.1e}: "
        f"{'the same' if chain_ok else 'DIFFERENT'}",
        flush=True,
    )
    ok = worst <= TOLERANCE and chain_ok
    print(
        f"floors: bf16 matmul {floors['matmul_tflops']:,.0f} TFLOP/s; % peak: the chunk's "
        f"attention FLOPs over its time; {'ok' if ok else 'KERNELS DISAGREE'}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"floors": floors, "rows": rows, "chain_rel_err": errs, "ok": ok}, f, indent=2
            )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
