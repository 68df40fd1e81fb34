"""The batch-1 decode step's kernels one by one, beside their floor, on llama-3-8b shapes (bf16).

What a batch-1 decode step could still lose (`gpu_engine.py --profile`: 4.83 ms of kernels a
step against a 3.62 ms weight-read floor): the narrow projections, where cuBLAS splits K and
adds a reduction kernel, and the two small kernels between QKV and attention. For each, in one
run on this GPU:

1. each projection at M = 1: cuBLAS (`F.linear`) and the Triton GEMV (`engine/gemv_triton.py`,
   autotuned), time per call and TB/s beside the weight bytes / measured HBM read bandwidth;
   every call in a CUDA graph, each on its own copy of the weight (more bytes than L2 holds, as
   32 layers are), checked against a float32 product;
2. RoPE + the KV write at 1 and 64 tokens: flashinfer's RoPE and the index_put the engine runs
   now, against the fused Triton kernel (`engine/attention/fused_rope_kv.py`), 32 layers per
   graph, outputs compared;
3. the down projection with its SwiGLU activation: flashinfer's `silu_and_mul` then the GEMV,
   against the GEMV computing the activation in its loads (`gemv(..., silu_mul=True)`);
4. what a step would save: 32 layers of each projection plus lm_head, and 32 RoPE + KV writes.

    python benchmarks/gpu_small_kernels.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from radixkv.bench.floors import measure_floors

LAYERS = 32
HIDDEN, INTER, VOCAB, HQ, HKV, D = 4096, 14336, 128256, 32, 8, 128
SHAPES = {  # name: (N, K, per step)
    "qkv": ((HQ + 2 * HKV) * D, HIDDEN, LAYERS),
    "o_proj": (HIDDEN, HQ * D, LAYERS),
    "gate_up": (2 * INTER, HIDDEN, LAYERS),
    "down": (HIDDEN, INTER, LAYERS),
    "lm_head": (VOCAB, HIDDEN, 1),
}
L2_BYTES = 64 << 20  # more than the H200's L2: copies of a weight rotate past it


def graph_time(fn, calls: int, replays: int = 20) -> float:
    """Seconds per call of `fn(i)` for i in range(calls), captured in one CUDA graph (no launch
    overhead between calls, as in the engine's decode graph)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for i in range(calls):
            fn(i)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / replays / calls


def projection(n: int, k: int, read_bps: float) -> dict:
    """One projection at M = 1: cuBLAS and the Triton GEMV, timed and checked."""
    from engine.gemv_triton import _gemv_tuned, gemv

    nbytes = n * k * 2
    copies = max(2, -(-2 * L2_BYTES // nbytes))
    ws = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
    x = torch.randn(1, k, dtype=torch.bfloat16, device="cuda")
    ref = x.float() @ ws[0].float().T
    ys = (F.linear(x, ws[0]), gemv(x, ws[0]))  # the second autotunes for this shape
    torch.cuda.synchronize()
    scale = ref.abs().max().item()
    return {
        "bytes": nbytes,
        "floor_s": nbytes / read_bps,
        "cublas_s": graph_time(lambda i: F.linear(x, ws[i % copies]), copies),
        "triton_s": graph_time(lambda i: gemv(x, ws[i % copies]), copies),
        "rel_err": [(y.float() - ref).abs().max().item() / scale for y in ys],
        "best_config": str(getattr(_gemv_tuned, "best_config", None)),  # the autotuner's pick
    }


def projections(floors: dict, out: dict) -> None:
    read = floors["hbm_read_gbps"] * 1e9
    print(
        "\n| projection | N x K | MB | floor us | cuBLAS us (TB/s) | Triton GEMV us (TB/s) "
        "| rel. err cuBLAS / Triton | Triton config |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (n, k, per_step) in SHAPES.items():
        r = out[name] = {"n": n, "k": k, "per_step": per_step, **projection(n, k, read)}
        b = r["bytes"]
        print(
            f"| {name} | {n} x {k} | {b / 1e6:.1f} | {r['floor_s'] * 1e6:.1f} | "
            f"{r['cublas_s'] * 1e6:.1f} ({b / r['cublas_s'] / 1e12:.2f}) | "
            f"{r['triton_s'] * 1e6:.1f} ({b / r['triton_s'] / 1e12:.2f}) | "
            f"{r['rel_err'][0]:.1e} / {r['rel_err'][1]:.1e} | {r['best_config']} |",
            flush=True,
        )
        torch.cuda.empty_cache()


def rope_kv(t: int, cos_sin: torch.Tensor) -> dict:
    """RoPE + KV write of `t` tokens: flashinfer's RoPE and the index_put, against the fused
    kernel; 32 layers per graph, outputs compared."""
    from engine.attention.fused_rope_kv import rope_store_kv
    from engine.attention.kv_write import store_kv
    from engine.llama import _FI_ROPE

    pages, ps = 4096, 16
    pools = [torch.zeros(pages, 2, ps, HKV, D, dtype=torch.bfloat16, device="cuda") for _ in "ab"]
    qkv0 = torch.randn(t, (HQ + 2 * HKV) * D, dtype=torch.bfloat16, device="cuda")
    pos = torch.randint(0, cos_sin.shape[0], (t,), device="cuda")
    slots = torch.randperm(pages * ps, device="cuda")[:t]
    out_pages, out_offsets = slots // ps, slots % ps
    bufs = [qkv0.clone(), qkv0.clone()]

    def apart(_i: int) -> None:
        q, k, v = bufs[0].split([HQ * D, HKV * D, HKV * D], -1)
        _FI_ROPE.apply_rope_with_cos_sin_cache_inplace(pos, q, k, D, cos_sin, is_neox=True)
        store_kv(pools[0], out_pages, out_offsets, k.view(t, HKV, D), v.view(t, HKV, D))

    def fused(_i: int) -> None:
        rope_store_kv(bufs[1], pos, cos_sin, pools[1], out_pages, out_offsets, HQ, HKV, D)

    apart(0)
    fused(0)
    torch.cuda.synchronize()
    diff = max(
        (bufs[0].float() - bufs[1].float()).abs().max().item(),
        (pools[0].float() - pools[1].float()).abs().max().item(),
    )
    # (in place again and again from here: timing only)
    return {
        "apart_s": graph_time(apart, LAYERS),
        "fused_s": graph_time(fused, LAYERS),
        "max_diff": diff,
    }


def rope_and_kv_write(out: dict) -> None:
    angles = (
        torch.arange(8192, device="cuda").float()[:, None]
        / (500000.0 ** (torch.arange(0, D, 2, device="cuda").float() / D))[None, :]
    )
    cos_sin = torch.cat((angles.cos(), angles.sin()), -1)
    print("\n| tokens | flashinfer RoPE + index_put us | fused Triton us | max diff of outputs |")
    print("|---|---|---|---|")
    for t in (1, 64):
        r = out[f"rope_kv_{t}"] = rope_kv(t, cos_sin)
        print(
            f"| {t} | {r['apart_s'] * 1e6:.2f} | {r['fused_s'] * 1e6:.2f} | {r['max_diff']:.3g} |",
            flush=True,
        )


def swiglu_down(out: dict) -> None:
    """down(silu(gate) * up) at M = 1: flashinfer's activation kernel then the GEMV, against the
    GEMV that computes the activation as it loads it; 32 layers' weights per graph."""
    from engine.gemv_triton import gemv
    from engine.llama import _FI_ACT

    n, k = HIDDEN, INTER
    ws = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(LAYERS)]
    gate_up = torch.randn(1, 2 * k, dtype=torch.bfloat16, device="cuda")
    apart = gemv(_FI_ACT.silu_and_mul(gate_up), ws[0])
    fused = gemv(gate_up, ws[0], silu_mul=True)  # (autotunes this form)
    torch.cuda.synchronize()
    r = out["swiglu_down"] = {
        "apart_s": graph_time(lambda i: gemv(_FI_ACT.silu_and_mul(gate_up), ws[i]), LAYERS),
        "fused_s": graph_time(lambda i: gemv(gate_up, ws[i], silu_mul=True), LAYERS),
        "rel_err": ((fused.float() - apart.float()).norm() / apart.float().norm()).item(),
    }
    print(
        "\ndown + SwiGLU at M = 1: "
        f"silu_and_mul then GEMV {r['apart_s'] * 1e6:.2f} us, the "
        f"activation in the GEMV's loads {r['fused_s'] * 1e6:.2f} us (relative difference "
        f"{r['rel_err']:.1e}); per step {(r['apart_s'] - r['fused_s']) * LAYERS * 1e3:.3f} ms "
        "saved"
    )


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    floors = measure_floors(torch.device("cuda"))
    out: dict = {"floors": floors}
    projections(floors, out)
    try:
        rope_and_kv_write(out)
    except Exception as err:  # flashinfer missing or failing: the GEMV figures still stand
        print(f"RoPE + KV write: skipped ({type(err).__name__}: {err})")
    try:
        swiglu_down(out)
    except Exception as err:  # as above
        print(f"down + SwiGLU: skipped ({type(err).__name__}: {err})")
    step = {"cublas": 0.0, "triton": 0.0, "floor": 0.0}
    for name in SHAPES:
        r = out[name]
        for key in ("cublas", "triton", "floor"):
            step[key] += r[f"{key}_s"] * r["per_step"]
    best = sum(min(out[n]["cublas_s"], out[n]["triton_s"]) * out[n]["per_step"] for n in SHAPES)
    print(
        f"\nprojections per batch-1 step: floor {step['floor'] * 1e3:.2f} ms, cuBLAS "
        f"{step['cublas'] * 1e3:.2f} ms, Triton GEMV {step['triton'] * 1e3:.2f} ms, the faster of "
        f"each {best * 1e3:.2f} ms"
    )
    if "rope_kv_1" in out:
        r = out["rope_kv_1"]
        print(
            f"RoPE + KV write per batch-1 step (32 layers): {r['apart_s'] * LAYERS * 1e3:.3f} ms "
            f"apart, {r['fused_s'] * LAYERS * 1e3:.3f} ms fused"
        )
    out["step"] = {**step, "best_of_each": best}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
