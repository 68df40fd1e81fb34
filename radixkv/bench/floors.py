"""The hardware's floors, measured in the run that reports against them, and the least time a
run's work can take on this GPU. Every GPU benchmark prints its figures beside these.

A run's work is a list of `Work` rows (one per request); `work_floor` prices it:
- prefill: the computed prompt tokens' FLOPs (2 x parameters per token, plus causal attention
  over their context) at the measured bf16 matmul peak;
- decode weights: decode steps x weight bytes / HBM bandwidth (the caller gives the fewest
  steps its schedule allows: one request's tokens come one after another);
- decode KV: each output token reads its context's KV once (bytes / HBM bandwidth);
- loads: host and remote hits' KV at the measured pinned host-to-device bandwidth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


def cuda_time(fn, iters: int = 5, warmup: int = 2) -> float:
    """Seconds per call, CUDA-synchronised (the sync is the point of a benchmark)."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(iters):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / iters


def measure_floors(dev: torch.device) -> dict:
    """What this GPU can do, measured now: HBM copy and read bandwidth (1 GiB), the bf16 matmul
    peak (8192^3) and pinned host -> device bandwidth (1 GiB), in GB/s and TFLOP/s."""
    n = 1 << 30  # 1 GiB
    a = torch.empty(n // 2, dtype=torch.bfloat16, device=dev).normal_()
    b = torch.empty_like(a)
    copy = cuda_time(lambda: b.copy_(a), iters=10, warmup=2)
    read = cuda_time(lambda: a.sum(dtype=torch.float32), iters=10, warmup=2)
    x = torch.randn(8192, 8192, dtype=torch.bfloat16, device=dev)
    mm = cuda_time(lambda: x @ x, iters=10, warmup=3)
    host = torch.empty(n, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(n, dtype=torch.uint8, device=dev)
    h2d = cuda_time(lambda: dst.copy_(host, non_blocking=True), iters=5, warmup=1)
    floors = {
        "hbm_copy_gbps": 2 * n / copy / 1e9,  # read + write
        "hbm_read_gbps": n / read / 1e9,
        "matmul_tflops": 2 * 8192**3 / mm / 1e12,
        "h2d_pinned_gbps": n / h2d / 1e9,
    }
    floors["hbm_gbps"] = max(floors["hbm_copy_gbps"], floors["hbm_read_gbps"])
    print(
        "floors: HBM {hbm_read_gbps:,.0f} GB/s read, {hbm_copy_gbps:,.0f} GB/s copy; bf16 matmul "
        "{matmul_tflops:,.0f} TFLOP/s; pinned host->device {h2d_pinned_gbps:,.1f} GB/s".format(
            **floors
        ),
        flush=True,
    )
    return floors


def weight_bytes(model) -> int:
    """Bytes a decode step reads: every weight but the embedding table (one row each)."""
    embed = model.model.embed_tokens.weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    tied = model.lm_head.weight is embed
    return total if tied else total - embed.numel() * embed.element_size()


@dataclass(frozen=True)
class Work:
    """One request's work: prompt tokens, how many were cached (any tier), how many of those
    came from host or remote (loaded over the link), output tokens."""

    prompt: int
    cached: int
    loaded: int
    output: int


def prefill_flops(*, w_bytes: int, num_layers: int, attn_dim: int) -> tuple[float, float]:
    """Prefill's FLOPs per computed token (2 x parameters; bf16: parameters = bytes / 2) and per
    (query, key) pair of causal attention, all layers: c cached tokens of a p-token prompt leave
    (p^2 - c^2) / 2 pairs to compute."""
    return 2 * (w_bytes / 2), 4.0 * num_layers * attn_dim


def work_floor(
    work: list[Work],
    *,
    num_layers: int,
    attn_dim: int,  # query heads x head dim
    w_bytes: int,
    kv_bytes_per_token: float,
    floors: dict,
    decode_steps: int,
) -> dict:
    """The least seconds `work` takes on the GPU `floors` describes, by part (module doc)."""
    per_token, per_pair = prefill_flops(w_bytes=w_bytes, num_layers=num_layers, attn_dim=attn_dim)
    flops = sum(
        per_token * (w.prompt - w.cached) + per_pair * (w.prompt**2 - w.cached**2) / 2 for w in work
    )
    kv_read = sum(w.output * (w.prompt + w.output / 2) * kv_bytes_per_token for w in work)
    hbm = floors["hbm_gbps"] * 1e9
    return {
        "prefill": flops / (floors["matmul_tflops"] * 1e12),
        "decode_weights": decode_steps * w_bytes / hbm,
        "decode_kv": kv_read / hbm,
        "loads": sum(w.loaded for w in work)
        * kv_bytes_per_token
        / (floors["h2d_pinned_gbps"] * 1e9),
    }
