"""What FP8 KV pages cost in accuracy: the next-token distribution at every position of a fixed
text with the KV pool in float8 e4m3 (unscaled, saturated: `--kv-cache-dtype fp8_e4m3`) and in
bfloat16, each against the model's own float32 KV, in one run.

The default model (SmolLM2-135M-Instruct) in float32 on the CPU, the torch attention backend
(which reads K and V back from the pool, so every position's attention sees the stored dtype),
one prefill over the text. Printed per KV dtype: top-1 agreement with the reference, the mean
and largest KL(reference || variant) in nats, and the pool's bytes per token. Then whether
scales would help: per layer, the relative error of the float32 run's K and V stored in fp8
unscaled (saturated) against fp8 with a per-layer scale (amax / 448), and how much of each lies
beyond 448 or below e4m3's smallest normal (2^-6), where only a scale changes the error.

    python benchmarks/kv_fp8_accuracy.py [--tokens 1024] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys

import torch

TEXT = (
    "The lighthouse keeper climbed the narrow stairs every evening, carrying a lamp and a "
    "notebook. In it he wrote the weather, the ships he saw, and the birds that rested on the "
    "rail. Over forty years the notebooks filled a shelf, then a room; a historian who read "
    "them found the first record of a storm that no harbour had logged, and of a whale that "
    "came into the bay each spring. Numbers, names and dates: 1887, the Morning Star, 14 knots, "
    "north-north-east, a barometer at 29.4 inches and falling. "
)


def next_token_logits(model, ids: list[int], kv_dtype: torch.dtype, page_size: int):
    """Logits at every position of `ids` from one prefill with the KV pool in `kv_dtype`, the
    pool's bytes per token, and the pool."""
    from engine.attention import TorchPagedAttention
    from engine.forward_batch import ForwardBatch
    from storage import DevicePool, KVLayout

    cfg = model.config
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, page_size, kv_dtype)
    pages = -(-len(ids) // page_size)
    pool = DevicePool(layout, pages, "cpu")
    backend = TorchPagedAttention(pool, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    batch = ForwardBatch.build([(ids, 0, list(range(pages)))], page_size, "cpu")
    with torch.inference_mode():
        logits = model(batch, backend, all_logits=True).float()
    return logits, layout.page_bytes // page_size, pool


def scale_errors(pool) -> dict:
    """Per layer and K / V: fp8 e4m3's relative error unscaled (saturated) and with the layer's
    own scale (amax / 448), and the shares above 448 and below 2^-6."""
    from engine.attention.kv_write import FP8, FP8_MAX, to_kv

    def err(x: torch.Tensor, scale: float) -> float:
        y = to_kv(x / scale, FP8).float() * scale  # the engine's own saturating store
        return ((y - x).norm() / x.norm()).item()

    rows = []
    for layer in range(pool.layout.num_layers):
        for i, name in enumerate("KV"):
            x = pool.layer(layer)[:, i].float()
            a = x.abs()
            rows.append(
                {
                    "layer": layer,
                    "kv": name,
                    "amax": a.max().item(),
                    "above_448": (a > FP8_MAX).float().mean().item(),
                    "below_2^-6": (a < 2**-6).float().mean().item(),
                    "err_unscaled": err(x, 1.0),
                    "err_scaled": err(x, a.max().item() / FP8_MAX),
                }
            )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=1024, help="positions compared")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    from radixkv import Engine

    eng = Engine(device="cpu", dtype="float32", host_memory_gb=0, remote_url=None)
    ids = eng.tokenizer.encode(TEXT * (args.tokens // 100 + 1))[: args.tokens]
    model, page_size = eng.model, eng.cache.page_size
    ref, ref_bytes, ref_pool = next_token_logits(model, ids, torch.float32, page_size)
    scales = scale_errors(ref_pool)
    ref_logp = torch.log_softmax(ref, -1)
    rows = {"float32": {"bytes_per_token": ref_bytes}}
    for name, dtype in (("bfloat16", torch.bfloat16), ("fp8_e4m3", torch.float8_e4m3fn)):
        got, nbytes, _ = next_token_logits(model, ids, dtype, page_size)
        logp = torch.log_softmax(got, -1)
        kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)  # per position, nats
        rows[name] = {
            "top1_agreement": (got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
            "kl_mean": kl.mean().item(),
            "kl_max": kl.max().item(),
            "bytes_per_token": nbytes,
        }
    eng.close()
    print(f"{len(ids)} positions of a fixed text, default model, float32 weights, CPU")
    print("| KV pages | top-1 agreement | KL mean (nats) | KL max | KV bytes per token |")
    print("|---|---|---|---|---|")
    print(f"| float32 (reference) | 100% | 0 | 0 | {ref_bytes:,} |")
    for name in ("bfloat16", "fp8_e4m3"):
        r = rows[name]
        print(
            f"| {name} | {r['top1_agreement']:.2%} | {r['kl_mean']:.2e} | {r['kl_max']:.2e} | "
            f"{r['bytes_per_token']:,} |"
        )
    print("\nWould a per-layer scale help? fp8's relative error of the float32 run's K and V:")
    print("| | amax (largest layer) | share > 448 | share < 2^-6 | error unscaled | error scaled |")
    print("|---|---|---|---|---|---|")
    for name in "KV":
        sel = [r for r in scales if r["kv"] == name]
        worst = max(sel, key=lambda r: r["amax"])

        def span(key: str, sel=sel) -> str:
            return f"{min(r[key] for r in sel):.4f}-{max(r[key] for r in sel):.4f}"

        print(
            f"| {name} | {worst['amax']:.1f} (layer {worst['layer']}) | "
            f"{max(r['above_448'] for r in sel):.1%} | {span('below_2^-6')} | "
            f"{span('err_unscaled')} | {span('err_scaled')} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"dtypes": rows, "scales": scales}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
