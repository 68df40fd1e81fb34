"""FP8 KV pages on the GPU: flashinfer's attention over fp8_e4m3 pages against bf16 pages,
llama-3-8b's attention shapes (32 query heads, 8 KV heads, dim 128, 16-token pages), one run.

K and V are drawn as a model's are shaped: normal, with a few channels 20x larger (the outlier
channels real keys have). Three KV stores of the same values: bf16 (the reference), fp8
unscaled (saturated at +-448, the CPU engine's scheme) and fp8 with one scale per layer for K
and one for V (amax / 448, passed to flashinfer as k_scale / v_scale). Printed for decode
(batch x context) and prefill (new tokens over a cached prefix): the relative error of the
attention output against bf16 pages (the same kernel family); for decode also the kernel's own
error (against float32 attention in torch over the very values stored, scale applied), and its
time against its floor (KV bytes / the HBM bandwidth measured in this run).

    python benchmarks/gpu_kv_fp8.py [--batch 32] [--context 4096] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

from engine.attention.kv_write import FP8, FP8_MAX, to_kv
from radixkv.bench.floors import cuda_time, measure_floors

HEADS, KV_HEADS, DIM, PS = 32, 8, 128, 16


def kv_values(pages: int, dev: torch.device, gen: torch.Generator) -> torch.Tensor:
    """[pages, 2, PS, KV_HEADS, DIM] float32: normal, 4 of each head's channels 20x larger."""
    x = torch.randn(pages, 2, PS, KV_HEADS, DIM, device=dev, generator=gen)
    x[..., :4] *= 20.0
    return x


def quantize(kv: torch.Tensor, scaled: bool) -> tuple[torch.Tensor, float, float]:
    """fp8 pages and (k_scale, v_scale): amax / 448 per tensor, or 1 (saturated) unscaled."""
    if not scaled:
        return to_kv(kv, FP8), 1.0, 1.0  # the engine's own saturating store
    ks = kv[:, 0].abs().max().item() / FP8_MAX
    vs = kv[:, 1].abs().max().item() / FP8_MAX
    out = torch.empty_like(kv, dtype=FP8)
    out[:, 0] = to_kv(kv[:, 0] / ks, FP8)
    out[:, 1] = to_kv(kv[:, 1] / vs, FP8)
    return out, ks, vs


def decode_reference(q: torch.Tensor, kv: torch.Tensor, ks: float, vs: float, tokens: int, n: int):
    """float32 attention (torch) of the first `n` sequences' one query over their first
    `tokens` tokens of the stored values as they are (fp8 or bf16, times their scale): what
    a correct kernel returns for those pages, so the kernel's own error shows apart from the
    rounding. q: [B, HEADS, DIM]; kv: [B * per_seq, 2, PS, KV_HEADS, DIM], sequence i's pages
    from i * (len(kv) // B)."""
    per_seq, pages = kv.shape[0] // q.shape[0], -(-tokens // PS)
    out = []
    for i in range(n):
        seq = kv[i * per_seq : i * per_seq + pages].float()
        k = seq[:, 0].reshape(-1, KV_HEADS, DIM)[:tokens].transpose(0, 1) * ks  # [KV_HEADS, T, DIM]
        v = seq[:, 1].reshape(-1, KV_HEADS, DIM)[:tokens].transpose(0, 1) * vs
        o = torch.nn.functional.scaled_dot_product_attention(
            q[i].float()[:, None, :], k, v, enable_gqa=True
        )  # [HEADS, 1, DIM]
        out.append(o[:, 0])
    return torch.stack(out)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--new", type=int, default=512, help="prefill: new tokens per sequence")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import flashinfer

    dev = torch.device("cuda")
    floors = measure_floors(dev)
    gen = torch.Generator(device=dev).manual_seed(0)
    per_seq = -(-(args.context + args.new) // PS)
    kv32 = kv_values(args.batch * per_seq, dev, gen)
    stores = {
        "bf16": (kv32.to(torch.bfloat16), 1.0, 1.0),
        "fp8 unscaled": quantize(kv32, scaled=False),
        "fp8 per-layer scale": quantize(kv32, scaled=True),
    }
    del kv32
    indptr = torch.arange(args.batch + 1, dtype=torch.int32) * per_seq
    indices = torch.arange(args.batch * per_seq, dtype=torch.int32)
    workspace = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    results: dict = {"floors": floors, "decode": {}, "prefill": {}}

    # decode: one query per sequence over `context` tokens (the pages' first context tokens)
    dec_pages = -(-args.context // PS)
    d_indptr = torch.arange(args.batch + 1, dtype=torch.int32) * dec_pages
    d_indices = (indptr[:-1, None] + torch.arange(dec_pages, dtype=torch.int32)).flatten()
    d_last = torch.full((args.batch,), args.context - (dec_pages - 1) * PS, dtype=torch.int32)
    q = torch.randn(args.batch, HEADS, DIM, device=dev, generator=gen).to(torch.bfloat16)
    ref = None
    for name, (kv, ks, vs) in stores.items():
        w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
        try:
            w.plan(d_indptr, d_indices, d_last, HEADS, KV_HEADS, DIM, PS,
                   q_data_type=torch.bfloat16, kv_data_type=kv.dtype)  # fmt: skip
            out = w.run(q, kv, k_scale=ks, v_scale=vs)
        except Exception as err:  # a kernel this flashinfer lacks: say which, go on
            print(f"decode {name}: flashinfer failed: {err}", flush=True)
            results["decode"][name] = {"error": str(err)}
            continue
        ref = out if ref is None else ref
        s = cuda_time(lambda w=w, kv=kv, ks=ks, vs=vs: w.run(q, kv, k_scale=ks, v_scale=vs), 20)
        kv_bytes = args.batch * args.context * 2 * KV_HEADS * DIM * kv.element_size()
        floor = kv_bytes / (floors["hbm_gbps"] * 1e9)
        exact = decode_reference(q, kv, ks, vs, args.context, min(4, args.batch))
        results["decode"][name] = row = {
            "rel_err_vs_bf16": rel_err(out, ref),
            "kernel_rel_err": rel_err(out[: exact.shape[0]], exact),
            "ms": s * 1e3,
            "floor_ms": floor * 1e3,
            "kv_bytes": kv_bytes,
        }
        print(
            f"decode {args.batch} x {args.context:,} {name:>20}: rel. error {row['rel_err_vs_bf16']:.2e} "
            f"(the kernel against float32 over the same stored values: {row['kernel_rel_err']:.2e}), "
            f"{row['ms']:.3f} ms (floor {row['floor_ms']:.3f} ms, {s / floor:.2f}x)",
            flush=True,
        )

    # prefill: `new` tokens per sequence after `context` cached ones, causal
    qo = torch.arange(args.batch + 1, dtype=torch.int32) * args.new
    total = args.context + args.new
    last = torch.full((args.batch,), total - (per_seq - 1) * PS, dtype=torch.int32)
    qp = torch.randn(args.batch * args.new, HEADS, DIM, device=dev, generator=gen)
    qp = qp.to(torch.bfloat16)
    ref = None
    for name, (kv, ks, vs) in stores.items():
        w = flashinfer.BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend="fa2")
        try:
            w.plan(qo, indptr, indices, last, HEADS, KV_HEADS, DIM, PS, causal=True,
                   q_data_type=torch.bfloat16, kv_data_type=kv.dtype)  # fmt: skip
            out = w.run(qp, kv, k_scale=ks, v_scale=vs)
        except Exception as err:
            print(f"prefill {name}: flashinfer failed: {err}", flush=True)
            results["prefill"][name] = {"error": str(err)}
            continue
        ref = out if ref is None else ref
        s = cuda_time(lambda w=w, kv=kv, ks=ks, vs=vs: w.run(qp, kv, k_scale=ks, v_scale=vs), 10)
        results["prefill"][name] = row = {"rel_err_vs_bf16": rel_err(out, ref), "ms": s * 1e3}
        print(
            f"prefill {args.batch} x ({args.context:,} cached + {args.new}) {name:>20}: rel. error "
            f"{row['rel_err_vs_bf16']:.2e}, {row['ms']:.3f} ms",
            flush=True,
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
