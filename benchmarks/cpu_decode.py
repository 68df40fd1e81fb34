"""CPU decode: radixkv's engine against Hugging Face transformers on the same weights, one run.

The default model (SmolLM2-135M-Instruct, its GGUF dequantized to float32 by both), greedy,
batch 1 and 8. A decode step's time is taken as the difference between generating N2 and N1
tokens over the same prompts, divided by N2 - N1, so prefill and start-up cancel out.

    python benchmarks/cpu_decode.py [--threads N] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

N1, N2 = 8, 72


def radixkv_step_ms(prompts: list[list[int]]) -> float:
    from radixkv import Engine

    with Engine(device="cpu", host_memory_gb=0, remote_url=None, prefix_caching=False) as eng:
        eng.generate(prompts, max_tokens=4, ignore_eos=True)  # warm-up
        times = {}
        for n in (N1, N2):
            t = time.perf_counter()
            eng.generate(prompts, max_tokens=n, ignore_eos=True)
            times[n] = time.perf_counter() - t
    return (times[N2] - times[N1]) / (N2 - N1) * 1e3


def hf_step_ms(prompts: list[list[int]]) -> float:
    import transformers

    from engine.default_model import GGUF_NAME, default_model_path

    path = default_model_path()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=GGUF_NAME, dtype=torch.float32
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
    rng = torch.Generator().manual_seed(0)
    rows = {}
    for batch in (1, 8):
        prompts = torch.randint(100, 40000, (batch, 64), generator=rng).tolist()
        ours, theirs = radixkv_step_ms(prompts), hf_step_ms(prompts)
        rows[batch] = {"radixkv_ms": ours, "hf_ms": theirs, "speedup": theirs / ours}
        print(
            f"batch {batch}: radixkv {ours:.1f} ms/step ({batch / ours * 1e3:,.0f} tok/s), "
            f"transformers {theirs:.1f} ms/step -> {theirs / ours:.2f}x",
            flush=True,
        )
    print(
        f"\n| batch | radixkv ms/step | transformers ms/step | speed-up | ({torch.get_num_threads()} threads)"
    )
    print("|---|---|---|---|")
    for b, r in rows.items():
        print(f"| {b} | {r['radixkv_ms']:.1f} | {r['hf_ms']:.1f} | {r['speedup']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
