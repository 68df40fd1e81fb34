"""A batch-1 matrix-vector product in Triton, for decode steps whose GEMMs read weights at M = 1.

At batch 1 every projection reads its whole weight matrix to make one row of output, so the
step's floor is the weights' bytes over HBM bandwidth. cuBLAS splits K for the narrow ones (QKV,
o_proj: N = 4,096-6,144 at K = 4,096) and adds a reduction kernel after each, reaching 3.0 and
2.5 TB/s there on an H200 (whose HBM reads at 4.1). This kernel gives each program BLOCK_N whole
rows and walks K in BLOCK_K steps (Triton pipelines the loads), so there is no reduction pass:
3.4 and 2.9 TB/s, and ahead of cuBLAS on every llama-3-8b projection (`gpu_small_kernels.py`).

    y[N] = W[N, K] @ x[K]     (W row-major, bf16/fp16; accumulated in float32)

With `silu_mul` (the MLP's down projection) x is computed in the loads from the gate/up
projection's output, x[k] = silu(gate[k]) * up[k], rounded to the activations' dtype as
flashinfer's `silu_and_mul` rounds it; the kernel that wrote x is gone from the step.

`GemvLinear` puts it behind a bias-free projection: one row runs the GEMV, more go to cuBLAS.
A model uses it with `CausalLM.use_triton_kernels()` (the engine's `--triton-kernels`).
`benchmarks/gpu_small_kernels.py` measures it against cuBLAS beside the weight-read floor.
Importing needs Triton; running it needs CUDA (or TRITON_INTERPRET=1 on CPU, which the tests
use to check its arithmetic).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch import nn

# (BLOCK_N, BLOCK_K, num_warps, num_stages): few, so the autotune stays a few seconds a shape
CONFIGS = [
    triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_warps=w, num_stages=s)
    for bn, bk, w, s in (
        (8, 512, 4, 4),
        (16, 256, 4, 4),
        (16, 512, 8, 3),
        (32, 256, 8, 4),
        (32, 128, 4, 6),
        (64, 128, 8, 4),
    )
]


INTERPRETER_CONFIG = {"BLOCK_N": 16, "BLOCK_K": 64}  # (no autotuning off CUDA)


@triton.jit
def _gemv_body(
    x_ptr,
    w_ptr,
    y_ptr,
    N,
    K,
    stride_wn,
    SILU_MUL: tl.constexpr,  # x_ptr holds [gate (K), up (K)]; x = silu(gate) * up
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # this program's rows of W: [pid*BN, pid*BN+BN)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k = k0 + cols
        k_ok = k < K
        w = tl.load(
            w_ptr + rows[:, None] * stride_wn + k[None, :],
            mask=row_ok[:, None] & k_ok[None, :],
            other=0.0,
        )
        x = tl.load(x_ptr + k, mask=k_ok, other=0.0)
        if SILU_MUL:
            gate = x.to(tl.float32)
            up = tl.load(x_ptr + K + k, mask=k_ok, other=0.0).to(tl.float32)
            x = (gate / (1.0 + tl.exp(-gate)) * up).to(x_ptr.dtype.element_ty)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    tl.store(y_ptr + rows, y.to(y_ptr.dtype.element_ty), mask=row_ok)


_gemv_tuned = triton.autotune(configs=CONFIGS, key=["N", "K", "SILU_MUL"])(_gemv_body)


def gemv(
    x: torch.Tensor, weight: torch.Tensor, config: dict | None = None, *, silu_mul: bool = False
) -> torch.Tensor:
    """x [1, K] or [K] @ weight[N, K].T -> [1, N] (or [N]), in x's dtype. With `silu_mul`, x is
    [1, 2K], gate then up, and the product is silu(gate) * up @ weight.T. `config` pins
    BLOCK_N / BLOCK_K (and num_warps / num_stages) instead of autotuning."""
    if weight.dim() != 2 or weight.stride(1) != 1:
        raise ValueError("gemv needs a row-major 2-D weight")
    n, k = weight.shape
    flat = x.reshape(-1)
    width = 2 * k if silu_mul else k
    if flat.numel() != width or not flat.is_contiguous():
        raise ValueError(f"gemv takes one contiguous row of {width} values, got {tuple(x.shape)}")
    y = torch.empty(n, dtype=x.dtype, device=x.device)
    if config is None and not x.is_cuda:  # Triton's CPU interpreter: the autotuner times on CUDA
        config = INTERPRETER_CONFIG
    if config is None:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]),)  # noqa: E731
        _gemv_tuned[grid](flat, weight, y, n, k, weight.stride(0), silu_mul)
    else:
        c = dict(config)
        launch = {key: c.pop(key) for key in ("num_warps", "num_stages") if key in c}
        _gemv_body[(triton.cdiv(n, c["BLOCK_N"]),)](
            flat, weight, y, n, k, weight.stride(0), silu_mul, **c, **launch
        )
    return y.view(*x.shape[:-1], n) if x.dim() > 1 else y


class GemvLinear(nn.Module):
    """A bias-free projection (the weight of the `nn.Linear` it replaces, shared) whose one-row
    products run `gemv` (a decode step at batch 1); more rows go to cuBLAS."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        if linear.bias is not None:
            raise ValueError("GemvLinear replaces bias-free projections only")
        self.weight = linear.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2 and x.shape[0] == 1 and x.is_contiguous():
            return gemv(x, self.weight)
        return F.linear(x, self.weight)

    def silu_mul_forward(self, gate_up: torch.Tensor, silu_and_mul) -> torch.Tensor:
        """self(silu(gate) * up) of gate_up [T, 2K]: one row in one GEMV that computes the
        activation as it loads it; more rows through `silu_and_mul` ([T, 2K] -> [T, K]) and
        cuBLAS."""
        if gate_up.dim() == 2 and gate_up.shape[0] == 1 and gate_up.is_contiguous():
            return gemv(gate_up, self.weight, silu_mul=True)
        return F.linear(silu_and_mul(gate_up), self.weight)

    def tune(self, silu_mul: bool = False) -> None:
        """Autotune the GEMV for this weight's shape (and input kind) now (it synchronises:
        never while a CUDA graph is being captured)."""
        width = self.weight.shape[1] * (2 if silu_mul else 1)
        x = torch.zeros(1, width, dtype=self.weight.dtype, device=self.weight.device)
        gemv(x, self.weight, silu_mul=silu_mul)
