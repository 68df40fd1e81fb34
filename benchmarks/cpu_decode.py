"""CPU decode: radixkv's engine against Hugging Face transformers on the same weights, one run.

The default model (SmolLM2-135M-Instruct, a Q4_1 GGUF), greedy, batch 1 and 8: radixkv in its
default (`dtype=auto`: the GGUF's own 4-bit weights, activations in bfloat16 where the CPU has
it and float32 elsewhere), in float32 and bfloat16 dequantized, and in bfloat16 with the 4-bit
weights, against transformers in the same dtype and in its default (float32) on the same file. A decode step's time
is the difference between generating N2 and N1 tokens over the same prompts, divided by
N2 - N1, so prefill and start-up cancel out. The floor beside each: the bytes of weights a step
reads (every weight but the embedding rows; 4-bit layers at their packed size) / this machine's
memory bandwidth, measured in the same run.

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


def radixkv_step_ms(prompts: list[list[int]], dtype: str, int4: bool) -> tuple[float, int]:
    """(ms per decode step, weight bytes a step reads)."""
    from radixkv import Engine

    with Engine(
        device="cpu",
        dtype=dtype,
        cpu_int4=int4,
        host_memory_gb=0,
        remote_url=None,
        prefix_caching=False,
    ) as eng:
        eng.generate(prompts, max_tokens=4, ignore_eos=True)  # warm-up
        times = {}
        for n in (N1, N2):
            t = time.perf_counter()
            eng.generate(prompts, max_tokens=n, ignore_eos=True)
            times[n] = time.perf_counter() - t
        model = eng.model
        embed = model.model.embed_tokens.weight
        tensors = [*model.parameters(), *model.buffers()]  # 4-bit layers hold buffers
        read = sum(
            p.numel() * p.element_size()
            for p in tensors
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
    from engine.int4_linear import int4_available
    from engine.model_loader import auto_dtype

    default = str(auto_dtype(None, torch.device("cpu"))).removeprefix("torch.")
    int4 = int4_available()  # dtype auto runs the GGUF's 4-bit weights where the kernel is
    gbps = memory_gbps()
    print(f"memory read bandwidth {gbps:.1f} GB/s; radixkv's default dtype here: {default}")
    rng = torch.Generator().manual_seed(0)
    # (label, radixkv dtype, its 4-bit path, the transformers dtype it is compared with)
    variants = [
        (
            f"default (dtype auto: {default}{', 4-bit GGUF weights' if int4 else ''})",
            "auto",
            True,
            "float32",
        ),
        ("float32", "float32", False, "float32"),
        ("bfloat16", "bfloat16", False, "bfloat16"),
        ("bfloat16, 4-bit GGUF weights", "bfloat16", True, "bfloat16"),
    ]
    rows = {}
    for batch in (1, 8):
        prompts = torch.randint(100, 40000, (batch, 64), generator=rng).tolist()
        hf = {d: hf_step_ms(prompts, getattr(torch, d)) for d in ("float32", "bfloat16")}
        row = {"hf": hf, "radixkv": {}}
        for label, dtype, int4, _ in variants:
            ms, read = radixkv_step_ms(prompts, dtype, int4)
            row["radixkv"][label] = {"ms": ms, "floor_ms": read / gbps / 1e6}
            print(f"batch {batch} {label}: radixkv {ms:.1f} ms/step", flush=True)
        print(f"batch {batch}: transformers fp32 {hf['float32']:.1f}, bf16 {hf['bfloat16']:.1f}")
        rows[batch] = row
    print(
        f"\n({torch.get_num_threads()} threads; ms per decode step; floor: weight bytes read / "
        f"memory bandwidth {gbps:.0f} GB/s; transformers' default on a GGUF: float32 over its "
        "packed weights)"
    )
    print(
        "| batch | radixkv | ms | floor | transformers (same dtype) | speed-up | vs transformers' default (fp32) |"
    )
    print("|---|---|---|---|---|---|---|")
    for b, r in rows.items():
        for label, _, _, hf_dtype in variants:
            ours = r["radixkv"][label]
            theirs = r["hf"][hf_dtype]
            print(
                f"| {b} | {label} | {ours['ms']:.1f} | {ours['floor_ms']:.1f} | "
                f"{theirs:.1f} ({hf_dtype}) | {theirs / ours['ms']:.2f}x | "
                f"{r['hf']['float32'] / ours['ms']:.2f}x |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
