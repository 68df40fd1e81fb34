"""GPU engine benchmark: llama-3-8b shapes with dummy weights, bf16, flashinfer, one run.

1. correctness: flashinfer vs the torch reference backend on one mixed batch (a cached-prefix
   prefill, a cold prefill and a decode), logits compared;
2. prefill tokens/s (4 x 2,048 tokens) and decode tokens/s at batch 1, 16 and 64 (1,024-token
   contexts), radixkv's model runner with flashinfer;
3. TTFT of a 4,096-token prompt through the Engine: cold, cached on device, cached on host;
4. the same prefill and decode in Hugging Face transformers on the same weights, as ratios.

    python benchmarks/gpu_engine.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from engine.attention import TorchPagedAttention
from engine.attention.flashinfer_backend import FlashInferPagedAttention
from engine.forward_batch import ForwardBatch
from engine.weights import dummy_model
from storage import DevicePool, KVLayout, PageAllocator

PS = 16


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


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", default=None)
    p.add_argument("--skip-hf", action="store_true", help="leave out the transformers comparison")
    args = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model, _ = dummy_model("llama-3-8b", dtype=torch.bfloat16, device=dev)
    cfg = model.config
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, PS, torch.bfloat16)
    pool = DevicePool(layout, 72 * 1024 * 2 // PS, dev)  # 147k tokens
    alloc = PageAllocator(pool.num_pages)
    fi = FlashInferPagedAttention(pool, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    ref = TorchPagedAttention(pool, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    rng = torch.Generator().manual_seed(1)

    def tokens(n):
        return torch.randint(0, cfg.vocab_size, (n,), generator=rng).tolist()

    def pages(n):
        return alloc.alloc(-(-n // PS))

    results: dict = {}
    # 1. correctness on a mixed batch
    a, b, c = tokens(300), tokens(200 + 100), tokens(500)
    tb, tc = pages(300), pages(501)
    model(
        ForwardBatch.build([(b[:200], 0, tb), (c, 0, tc)], PS, dev), fi
    )  # b's prefix, c's context
    mixed = [(a, 0, pages(300)), (b[200:], 200, tb), ([7], 500, tc)]
    want = model(ForwardBatch.build(mixed, PS, dev), ref)
    got = model(ForwardBatch.build(mixed, PS, dev), fi)
    rel = ((got - want).norm() / want.norm()).item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    results["flashinfer_vs_torch"] = {"relative_error": rel, "argmax_agreement": agree}
    print(
        f"flashinfer vs torch reference (mixed batch): relative error {rel:.2e}, argmax agreement {agree:.0%}",
        flush=True,
    )

    # 2. prefill and decode throughput, radixkv runner + flashinfer
    prompts = [tokens(2048) for _ in range(4)]
    tables = [pages(2048) for _ in range(4)]
    prefill = ForwardBatch.build(
        [(t, 0, tb) for t, tb in zip(prompts, tables, strict=True)], PS, dev
    )
    s = cuda_time(lambda: model(prefill, fi))
    results["prefill_tokens_per_s"] = 8192 / s
    print(f"prefill 4 x 2,048: {8192 / s:,.0f} tokens/s ({s * 1e3:.1f} ms)", flush=True)
    decode = {}
    for batch in (1, 16, 64):
        alloc = PageAllocator(pool.num_pages)  # a fresh page space for each batch size
        ctx = [tokens(1024) for _ in range(batch)]
        tabs = [pages(1024 + 64) for _ in range(batch)]
        for i in range(0, batch, 16):
            model(
                ForwardBatch.build(
                    [(ctx[j], 0, tabs[j]) for j in range(i, min(batch, i + 16))], PS, dev
                ),
                fi,
            )
        step = [0]

        def one_step(batch=batch, tabs=tabs, step=step):
            pos = 1024 + step[0] % 60
            step[0] += 1
            return model(
                ForwardBatch.build([([5], pos, tabs[j]) for j in range(batch)], PS, dev), fi
            )

        s = cuda_time(one_step, iters=20, warmup=3)
        decode[batch] = batch / s
        print(
            f"decode batch {batch:>2}: {batch / s:,.0f} tokens/s ({s * 1e3:.2f} ms/step)",
            flush=True,
        )
    results["decode_tokens_per_s"] = decode

    # host <-> device transfer of 255 scattered pages (a 4,080-token prefix): kernel vs portable
    from storage import HostPool, copy_device_to_host, copy_host_to_device

    pinned, plain = HostPool(layout, 512), HostPool(layout, 512, pin_memory=False)
    hp, dp = torch.randperm(512)[:255].tolist(), torch.randperm(pool.num_pages)[:255].tolist()
    nbytes = 255 * layout.page_bytes
    for name, host in (("uva kernel", pinned), ("portable", plain)):
        h2d = cuda_time(
            lambda host=host: copy_host_to_device(host, hp, pool, dp), iters=5, warmup=1
        )
        d2h = cuda_time(
            lambda host=host: copy_device_to_host(pool, dp, host, hp), iters=5, warmup=1
        )
        results[f"transfer_{name.split()[0]}_gbps"] = {
            "h2d": nbytes / h2d / 1e9,
            "d2h": nbytes / d2h / 1e9,
        }
        print(
            f"transfer 255 pages ({nbytes / 2**20:.0f} MiB) {name}: host->device {nbytes / h2d / 1e9:.1f} GB/s, device->host {nbytes / d2h / 1e9:.1f} GB/s",
            flush=True,
        )
    pinned = plain = None

    # 4. Hugging Face transformers on the same weights (shared tensors, no second copy)
    if args.skip_hf:
        pool = fi = ref = None  # release before the Engine takes its own pools
        torch.cuda.empty_cache()
        return _ttft(args, model, results, tokens, decode, None)
    import transformers

    hf_cfg = transformers.LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
        head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    )  # fmt: skip
    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(hf_cfg)
    hf.load_state_dict(model.state_dict(), assign=True)
    hf.model.rotary_emb = type(hf.model.rotary_emb)(hf_cfg, device=dev)
    hf = hf.to(dev).eval()
    ids = torch.tensor(prompts, device=dev)
    with torch.inference_mode():
        s = cuda_time(lambda: hf(ids, logits_to_keep=1), iters=3, warmup=1)
    results["hf_prefill_tokens_per_s"] = 8192 / s
    print(f"HF prefill 4 x 2,048: {8192 / s:,.0f} tokens/s", flush=True)
    hf_decode = {}
    for batch in (1, 16, 64):
        ctx = torch.randint(0, cfg.vocab_size, (batch, 1024), generator=rng).to(dev)
        with torch.inference_mode():
            out = hf(ctx, use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
            nxt = torch.full((batch, 1), 5, device=dev)

            def hf_step(cache=cache, nxt=nxt):
                hf(nxt, past_key_values=cache, use_cache=True)

            s = cuda_time(hf_step, iters=20, warmup=3)
        hf_decode[batch] = batch / s
        print(f"HF decode batch {batch:>2}: {batch / s:,.0f} tokens/s", flush=True)
        del cache, out
    results["hf_decode_tokens_per_s"] = hf_decode
    hf = pool = fi = ref = None  # release before the Engine takes its own pools
    torch.cuda.empty_cache()
    return _ttft(args, model, results, tokens, decode, hf_decode)


def _ttft(args, model, results, tokens, decode, hf_decode) -> int:

    # 3. TTFT of a 4,096-token prompt through the Engine
    from radixkv import DEVICE, Engine

    eng = Engine(
        "llama-3-8b",
        device="cuda",
        kv_memory_gb=12,
        host_memory_gb=8,
        remote_url=None,
        max_batch_tokens=8192,
        attention="flashinfer",
    )
    eng.model.load_state_dict(model.state_dict())
    model = None
    eng.generate([tokens(4096)], max_tokens=1)  # warm-up: kernels, allocator
    prompt = tokens(4096)
    ttft = {}
    for label in ("cold", "device", "host"):
        if label == "host":
            eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
        torch.cuda.synchronize()
        r = eng.generate([prompt], max_tokens=1)[0]
        ttft[label] = {"ttft_ms": r.ttft_s * 1e3, "cached_by_tier": r.cached_tokens_by_tier}
        print(
            f"TTFT 4,096 tokens {label:>6}: {r.ttft_s * 1e3:8.1f} ms  cached {r.cached_tokens_by_tier}",
            flush=True,
        )
    results["ttft_4096"] = ttft
    eng.close()

    print("\n| measure | radixkv (flashinfer) | HF transformers | ratio |")
    print("|---|---|---|---|")
    hf_prefill = results.get("hf_prefill_tokens_per_s")
    if hf_prefill:
        print(
            f"| prefill tokens/s, 4 x 2,048 | {results['prefill_tokens_per_s']:,.0f} | {hf_prefill:,.0f} | {results['prefill_tokens_per_s'] / hf_prefill:.2f}x |"
        )
    for b in (1, 16, 64):
        hf_b = (
            f"{hf_decode[b]:,.0f} | {decode[b] / hf_decode[b]:.2f}x" if hf_decode else "not run |"
        )
        print(f"| decode tokens/s, batch {b} | {decode[b]:,.0f} | {hf_b} |")
    for k, v in ttft.items():
        print(f"| TTFT 4,096 tokens, {k} | {v['ttft_ms']:.1f} ms | | |")
    for k in ("uva", "portable"):
        t = results[f"transfer_{k}_gbps"]
        print(
            f"| 255 scattered pages, {k} | host->device {t['h2d']:.1f} GB/s, device->host {t['d2h']:.1f} GB/s | | |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
