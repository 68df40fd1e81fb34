"""CPU decode: radixkv's engine against Hugging Face transformers on the same weights, one run.

The default model (SmolLM2-135M-Instruct, its Q4_1 GGUF dequantized by both), greedy, batch 1
and 8, each side in float32 and in bfloat16, and radixkv's default (`dtype=auto`: bfloat16 on a
CPU with native bf16) against transformers' default (float32 for a GGUF). A decode step's time
is the difference between generating N2 and N1 tokens over the same prompts, divided by
N2 - N1, so prefill and start-up cancel out. The floor beside each: the bytes of weights a step
reads (every weight but the embedding rows) / this machine's memory bandwidth, measured in the
same run.

    python benchmarks/cpu_decode.py [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

N1, N2 = 8, 72


def memory_gbps() -> float:
    """Read bandwidth: summing a 1 GiB tensor (far beyond any cache), best of 5."""
    x = torch.ones(2**28)
    best = min(_timed(x.sum) for _ in range(5))
    return x.numel() * 4 / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def radixkv_step_ms(prompts: list[list[int]], dtype: str) -> tuple[float, int]:
    """(ms per decode step, weight bytes a step reads)."""
    from radixkv import Engine

    with Engine(
        device="cpu", dtype=dtype, host_memory_gb=0, remote_url=None, prefix_caching=False
    ) as eng:
        eng.generate(prompts, max_tokens=4, ignore_eos=True)  # warm-up
        times = {}
        for n in (N1, N2):
            t = time.perf_counter()
            eng.generate(prompts, max_tokens=n, ignore_eos=True)
            times[n] = time.perf_counter() - t
        model = eng.model
        embed = model.model.embed_tokens.weight
        read = sum(
            p.numel() * p.element_size()
            for p in model.parameters()
            if p is not embed or model.lm_head.weight is embed  # tied: read whole as lm_head
        )
    return (times[N2] - times[N1]) / (N2 - N1) * 1e3, read


def hf_step_ms(prompts: list[list[int]], dtype: torch.dtype) -> float:
    import transformers

    from engine.default_model import GGUF_NAME, default_model_path

    path = default_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=GGUF_NAME, dtype=dtype
    ).eval()
    ids = torch.tensor(prompts)  # equal lengths: no padding
    times = {}
    with torch.inference_mode():
        hf.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        for n in (N1, N2):
            t = time.perf_counter()
            hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            times[n] = time.perf_counter() - t
    return (times[N2] - times[N1]) / (N2 - N1) * 1e3


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from engine.model_loader import auto_dtype

    default = str(auto_dtype(None, torch.device("cpu"))).removeprefix("torch.")
    gbps = memory_gbps()
    print(f"memory read bandwidth {gbps:.1f} GB/s; radixkv's default dtype here: {default}")
    rng = torch.Generator().manual_seed(0)
    rows = {}
    for batch in (1, 8):
        prompts = torch.randint(100, 40000, (batch, 64), generator=rng).tolist()
        row = {}
        for dtype in ("float32", "bfloat16"):
            ms, read = radixkv_step_ms(prompts, dtype)
            row[f"radixkv_{dtype}_ms"] = ms
            row[f"floor_{dtype}_ms"] = read / gbps / 1e6
            row[f"hf_{dtype}_ms"] = hf_step_ms(prompts, getattr(torch, dtype))
            print(
                f"batch {batch} {dtype}: radixkv {ms:.1f} ms/step (floor {row[f'floor_{dtype}_ms']:.1f}), "
                f"transformers {row[f'hf_{dtype}_ms']:.1f} ms/step",
                flush=True,
            )
        row["default_vs_hf_default"] = row["hf_float32_ms"] / row[f"radixkv_{default}_ms"]
        rows[batch] = row
    print(
        f"\n({torch.get_num_threads()} threads; ms per decode step; floor: weight bytes / memory bandwidth)"
    )
    print("| batch | dtype | radixkv | floor | transformers | speed-up |")
    print("|---|---|---|---|---|---|")
    for b, r in rows.items():
        for dtype in ("float32", "bfloat16"):
            ours, theirs = r[f"radixkv_{dtype}_ms"], r[f"hf_{dtype}_ms"]
            print(
                f"| {b} | {dtype} | {ours:.1f} | {r[f'floor_{dtype}_ms']:.1f} | {theirs:.1f} | "
                f"{theirs / ours:.2f}x |"
            )
        print(
            f"| {b} | defaults: radixkv {default} vs transformers float32 | "
            f"{r[f'radixkv_{default}_ms']:.1f} | | {r['hf_float32_ms']:.1f} | "
            f"{r['default_vs_hf_default']:.2f}x |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
