"""CPU prefill and end to end: radixkv's default engine against Hugging Face transformers'
default (float32) on the same GGUF, one run.

The default model (SmolLM2-135M-Instruct, Q4_1), greedy, prompts of 131 random tokens, batch 1
and 8, the prefix cache off (every prompt computed): prefill is a generate of one token (the
first token's time), end to end a generate of `--tokens` (32) new tokens; transformers runs
`model(ids, logits_to_keep=1)` and `generate` on the same prompts (equal lengths: no padding).
Each figure is the best of `--repeats` runs, the two sides alternating, so a noisy machine
slows both alike. Beside them: the prefill's floor, its matmul FLOPs (2 x weights x tokens)
over this machine's matmul peak in the engine's dtype (bfloat16 where the CPU has it natively,
else float32), measured in the same run (a 1,048 x 3,072 x 576 product, the default model's
widest, best of 20).

    python benchmarks/cpu_prefill.py [--threads N] [--tokens 32] [--repeats 3] [--dtype auto]
        [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

PROMPT = 131


def matmul_gflops(dtype: torch.dtype = torch.float32) -> float:
    """Matmul peak in `dtype`: the default model's widest product at a prefill's rows, best of
    20."""
    x, w = torch.randn(1048, 576, dtype=dtype), torch.randn(3072, 576, dtype=dtype)
    torch.nn.functional.linear(x, w)
    best = min(_timed(lambda: torch.nn.functional.linear(x, w)) for _ in range(20))
    return 2 * 1048 * 3072 * 576 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--tokens", type=int, default=32, help="new tokens end to end")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16"],
        help="the engine's dtype (auto: bfloat16 where the CPU has it natively, else float32)",
    )
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    from engine.default_model import GGUF_NAME, default_model_path
    from engine.model_loader import cpu_has_native_bf16
    from radixkv import Engine

    # the floor is at the peak of the dtype the engine computes in: bfloat16 where the CPU
    # multiplies it natively (dtype=auto), else float32
    if args.dtype == "auto":
        dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    else:
        dtype = getattr(torch, args.dtype)
    peak = matmul_gflops(dtype)
    fp32_peak = peak if dtype == torch.float32 else matmul_gflops()
    path = default_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=GGUF_NAME, dtype=torch.float32
    ).eval()
    weights = sum(
        m.weight.numel() for m in hf.modules() if isinstance(m, torch.nn.Linear)
    )  # the lm_head included: it runs for the last token only (counted for one row)
    lm_head = hf.lm_head.weight.numel()
    eng = Engine(
        device="cpu", dtype=args.dtype, host_memory_gb=0, remote_url=None, prefix_caching=False
    )
    rng = torch.Generator().manual_seed(0)
    rows = {}
    n = args.tokens

    def hf_prefill(ids):
        with torch.inference_mode():
            hf(ids, logits_to_keep=1)

    def hf_e2e(ids):
        with torch.inference_mode():
            hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)

    for batch in (1, 8):
        prompts = torch.randint(100, 40000, (batch, PROMPT), generator=rng).tolist()
        ids = torch.tensor(prompts)
        eng.generate(prompts, max_tokens=2, ignore_eos=True)  # warm-up, both sides
        hf_e2e(ids[:, :8])
        best = {k: float("inf") for k in ("ours_prefill", "hf_prefill", "ours_e2e", "hf_e2e")}
        for _ in range(args.repeats):
            for key, fn in (
                ("ours_prefill", lambda p=prompts: eng.generate(p, max_tokens=1, ignore_eos=True)),
                ("hf_prefill", lambda i=ids: hf_prefill(i)),
                ("ours_e2e", lambda p=prompts: eng.generate(p, max_tokens=n, ignore_eos=True)),
                ("hf_e2e", lambda i=ids: hf_e2e(i)),
            ):
                best[key] = min(best[key], _timed(fn))
        flops = 2 * ((weights - lm_head) * batch * PROMPT + lm_head * batch)
        best["prefill_floor"] = flops / (peak * 1e9)
        rows[batch] = best
        print(
            f"batch {batch}: prefill {best['ours_prefill'] * 1e3:,.0f} ms (transformers "
            f"{best['hf_prefill'] * 1e3:,.0f}, floor {best['prefill_floor'] * 1e3:,.0f}); "
            f"prefill + {n} tokens {best['ours_e2e'] * 1e3:,.0f} ms (transformers "
            f"{best['hf_e2e'] * 1e3:,.0f})",
            flush=True,
        )
    eng.close()
    print(
        f"\n({torch.get_num_threads()} threads; {PROMPT}-token prompts; best of {args.repeats}; "
        f"floor: matmul FLOPs / the measured {str(dtype).removeprefix('torch.')} peak "
        f"{peak:.0f} GFLOP/s, the engine's dtype here; float32 peak {fp32_peak:.0f})"
    )
    print("| batch | prefill ms | floor | transformers | speed-up | end to end ms | transformers "
          "| speed-up |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for b, r in rows.items():
        print(
            f"| {b} | {r['ours_prefill'] * 1e3:,.0f} | {r['prefill_floor'] * 1e3:,.0f} | "
            f"{r['hf_prefill'] * 1e3:,.0f} | {r['hf_prefill'] / r['ours_prefill']:.2f}x | "
            f"{r['ours_e2e'] * 1e3:,.0f} | {r['hf_e2e'] * 1e3:,.0f} | "
            f"{r['hf_e2e'] / r['ours_e2e']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"matmul_gflops": peak, "fp32_gflops": fp32_peak, "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
