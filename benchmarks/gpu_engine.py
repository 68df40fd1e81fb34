"""GPU engine benchmark: llama-3-8b shapes with dummy weights, bf16, flashinfer, one run.

0. the hardware's floors, measured in the same run: HBM bandwidth (device copy and read), bf16
   matmul peak (8192^3), pinned host -> device bandwidth;
1. correctness: flashinfer vs the torch reference on one mixed batch; the fused model (merged
   projections, flashinfer norms and RoPE) vs the unfused one; CUDA-graph decode vs eager;
2. prefill tokens/s (4 x 2,048) against the matmul floor, and the decode step at batch 1, 16
   and 64 (1,024-token contexts), eager and CUDA graph, against (weights + KV) / HBM bandwidth;
3. TTFT of a 4,096-token prompt through the Engine: cold, cached on device, cached on host,
   against its floor;
4. the same prefill and decode in Hugging Face transformers on the same weights, as ratios.

    python benchmarks/gpu_engine.py [--json PATH] [--skip-hf]
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time

import torch

from engine.attention import TorchPagedAttention
from engine.attention.flashinfer_backend import FlashInferPagedAttention
from engine.cuda_graph import DecodeGraphs
from engine.forward_batch import ForwardBatch
from engine.model_runner import ModelRunner, sample_rows
from engine.sampling import RowSampling, SamplingParams
from engine.weights import dummy_model
from radixkv.bench.floors import cuda_time, measure_floors, weight_bytes
from storage import DevicePool, KVLayout, PageAllocator

PS = 16


def _profile_kernels(fn, label: str, iters: int = 10) -> None:
    """The kernels behind `fn`, by GPU time per call (top 12)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(iters):
            fn()
        torch.cuda.synchronize()
    rows = {}
    for e in prof.events():
        if e.device_type.name == "CUDA":
            name = e.name[:70]
            t, n = rows.get(name, (0.0, 0))
            rows[name] = (t + getattr(e, "device_time_total", 0.0), n + 1)
    total = sum(t for t, _ in rows.values()) / iters / 1e3
    print(f"{label}: {total:.2f} ms of kernels per call; the top ones:", flush=True)
    for name, (t, n) in sorted(rows.items(), key=lambda kv: -kv[1][0])[:12]:
        print(f"  {t / iters / 1e3:7.3f} ms  x{n // iters:<4} {name}", flush=True)


def fit_gb(want_gb: float, *, weights_gb: float, margin_gb: float = 10.0) -> float:
    """A KV tier of at most `want_gb` that fits beside `weights_gb` of weights in what this
    card has free now (an H100's 80 GB or an H200's 141 GB), `margin_gb` left for activations
    and graphs; never below 2 GB. Collects first: earlier sections' tensors are freed."""
    gc.collect()
    torch.cuda.empty_cache()
    free_gb = torch.cuda.mem_get_info()[0] / 2**30
    got = max(2.0, min(want_gb, free_gb - weights_gb - margin_gb))
    print(f"GPU memory: {free_gb:.1f} GiB free; a KV tier of {got:.1f} GiB", flush=True)
    return got


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--json", default=None)
    p.add_argument("--skip-hf", action="store_true", help="leave out the transformers comparison")
    p.add_argument("--profile", action="store_true", help="print the decode step's top kernels")
    p.add_argument(
        "--ttft-only",
        action="store_true",
        help="measure only the cached-prompt TTFT (with its kernels under --profile)",
    )
    args = p.parse_args()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    results: dict = {"floors": measure_floors(dev)}
    hbm = results["floors"]["hbm_gbps"] * 1e9
    if args.ttft_only:
        rng = torch.Generator().manual_seed(1)
        _ttft(
            results,
            lambda n: torch.randint(0, 32000, (n,), generator=rng).tolist(),
            hbm,
            args.profile,
        )
        return 0
    model, _ = dummy_model("llama-3-8b", dtype=torch.bfloat16, device=dev)
    cfg = model.config
    hf = None if args.skip_hf else hf_twin(model, dev)  # shares the unfused weight tensors
    layout = KVLayout(cfg.num_layers, cfg.num_kv_heads, cfg.head_dim, PS, torch.bfloat16)
    # up to 147k tokens of KV (18 GiB), less where the card has less room
    pool_gb = fit_gb(18.0, weights_gb=0.0, margin_gb=24.0)
    pool = DevicePool(layout, int(pool_gb * 2**30) // layout.page_bytes, dev)
    alloc = PageAllocator(pool.num_pages)
    fi = FlashInferPagedAttention(pool, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    ref = TorchPagedAttention(pool, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim)
    rng = torch.Generator().manual_seed(1)

    def tokens(n):
        return torch.randint(0, cfg.vocab_size, (n,), generator=rng).tolist()

    def pages(n):
        return alloc.alloc(-(-n // PS))

    # 1. correctness on a mixed batch: flashinfer vs torch, then fused vs unfused
    a, b, c = tokens(300), tokens(200 + 100), tokens(500)
    tb, tc = pages(300), pages(501)
    model(ForwardBatch.build([(b[:200], 0, tb), (c, 0, tc)], PS, dev), fi)  # b's prefix, c's
    mixed = [(a, 0, pages(300)), (b[200:], 200, tb), ([7], 500, tc)]
    want = model(ForwardBatch.build(mixed, PS, dev), ref)
    got = model(ForwardBatch.build(mixed, PS, dev), fi)
    results["flashinfer_vs_torch"] = compare("flashinfer vs torch reference", got, want)
    model.fuse()
    fused = model(ForwardBatch.build(mixed, PS, dev), fi)
    results["fused_vs_unfused"] = compare("fused model vs unfused (flashinfer)", fused, got)
    w_bytes = weight_bytes(model)

    # 2. prefill against the matmul floor
    prompts = [tokens(2048) for _ in range(4)]
    tables = [pages(2048) for _ in range(4)]
    prefill = ForwardBatch.build(
        [(t, 0, tb) for t, tb in zip(prompts, tables, strict=True)], PS, dev
    )
    s = cuda_time(lambda: model(prefill, fi))
    params = w_bytes // 2
    attn = 4 * cfg.num_layers * 2 * 2 * (2048 * 2048 / 2) * cfg.num_heads * cfg.head_dim
    flops = 2 * params * 8192 + attn
    results["prefill"] = {
        "tokens_per_s": 8192 / s,
        "ms": s * 1e3,
        "floor_ms": flops / (results["floors"]["matmul_tflops"] * 1e12) * 1e3,
        "fraction_of_matmul_peak": flops / s / 1e12 / results["floors"]["matmul_tflops"],
    }
    r = results["prefill"]
    print(
        f"prefill 4 x 2,048: {r['tokens_per_s']:,.0f} tokens/s ({r['ms']:.1f} ms; floor "
        f"{r['floor_ms']:.1f} ms; {r['fraction_of_matmul_peak']:.0%} of the measured matmul peak)",
        flush=True,
    )

    # decode: eager and CUDA graph, the runner's whole step (sampling and its sync included)
    # the engine's default decode kernel, and flashinfer's other one (CUDA cores vs tensor
    # cores) captured beside it: both timed in this run, the default's figures in the table
    graphs = DecodeGraphs(model, pool, 64, 8192)
    other = DecodeGraphs(model, pool, 64, 8192, tensor_cores=not graphs.tensor_cores)
    kernel = {False: "CUDA-core", True: "tensor-core"}
    results["graph_capture"] = {"seconds": graphs.capture_s, "mib": graphs.memory_bytes / 2**20}
    results["decode_kernel"] = kernel[graphs.tensor_cores]
    eager, graphed, graphed_other = (
        ModelRunner(model, fi, "flashinfer"),
        ModelRunner(model, fi, "flashinfer", [graphs]),
        ModelRunner(model, fi, "flashinfer", [other]),
    )
    decode = {}
    for batch in (1, 16, 64):
        alloc = PageAllocator(pool.num_pages)  # a fresh page space for each batch size
        ctx = [tokens(1024) for _ in range(batch)]
        tabs = [pages(1024 + 64) for _ in range(batch)]
        for i in range(0, batch, 16):
            chunk = [(ctx[j], 0, tabs[j]) for j in range(i, min(batch, i + 16))]
            model(ForwardBatch.build(chunk, PS, dev), fi)
        greedy = [RowSampling(SamplingParams())] * batch
        kv_bytes = batch * 1024 * layout.page_bytes // PS  # every layer's K and V
        row = {"floor_ms": (w_bytes + kv_bytes) / hbm * 1e3}
        outs = {}
        for name, runner in (("eager", eager), ("graph", graphed), ("other", graphed_other)):
            step = [0]

            def one_step(runner=runner, batch=batch, tabs=tabs, step=step, greedy=greedy):
                pos = 1024 + step[0] % 60
                step[0] += 1
                fb = ForwardBatch.build(
                    [([5], pos, tabs[j]) for j in range(batch)], PS, dev, greedy
                )
                return runner.run(fb)

            row[f"{name}_ms"] = cuda_time(one_step, iters=30, warmup=3) * 1e3
            g = {"graph": graphs, "other": other}.get(name)
            if g is not None:  # the graph alone, planned once: the step's GPU time
                fb = ForwardBatch.build([([5], 1080, tabs[j]) for j in range(batch)], PS, dev)
                g.run(fb)
                bs = next(b for b in g.sizes if b >= batch)
                row[f"{name}_replay_only_ms"] = cuda_time(g.graphs[bs].replay, iters=30) * 1e3
                if args.profile:
                    label = f"decode batch {batch}, {kernel[g.tensor_cores]} kernel"
                    _profile_kernels(g.graphs[bs].replay, label)
            fb = ForwardBatch.build([([5], 1080, tabs[j]) for j in range(batch)], PS, dev, greedy)
            logits = g.run(fb) if g is not None else model(fb, fi)
            outs[name] = logits.clone()
        # where the graph step's host time goes: building the batch, then copies + plan +
        # launch (asynchronous), then sampling (its one sync waits for the replay)
        parts = {"build": 0.0, "prepare_and_launch": 0.0, "replay_and_sample": 0.0}
        for _ in range(20):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fb = ForwardBatch.build([([5], 1080, tabs[j]) for j in range(batch)], PS, dev, greedy)
            t1 = time.perf_counter()
            logits = graphs.run(fb)
            t2 = time.perf_counter()
            sample_rows(logits, fb.sampling)
            t3 = time.perf_counter()
            for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                parts[k] += dt / 20 * 1e3
        row["graph_step_parts_ms"] = parts
        print(
            f"decode batch {batch:>2}, graph step: "
            + ", ".join(f"{k.replace('_', ' ')} {v:.2f} ms" for k, v in parts.items()),
            flush=True,
        )
        for name in ("graph", "other"):
            row[f"{name}_vs_eager_max_abs"] = (outs[name] - outs["eager"]).abs().max().item()
            row[f"{name}_argmax_equal"] = bool(
                torch.equal(outs[name].argmax(-1), outs["eager"].argmax(-1))
            )
        row["ratio_to_floor"] = row["graph_ms"] / row["floor_ms"]
        decode[batch] = row
        print(
            f"decode batch {batch:>2}: eager {row['eager_ms']:.2f} ms, graph {row['graph_ms']:.2f} ms "
            f"({batch / row['graph_ms'] * 1e3:,.0f} tokens/s); floor {row['floor_ms']:.2f} ms -> "
            f"{row['ratio_to_floor']:.2f}x (graph replay alone {row['graph_replay_only_ms']:.2f} ms); "
            f"graph = eager argmax: {row['graph_argmax_equal']}; the "
            f"{kernel[other.tensor_cores]} kernel: step {row['other_ms']:.2f} ms, replay "
            f"{row['other_replay_only_ms']:.2f} ms, argmax equal {row['other_argmax_equal']}",
            flush=True,
        )
    results["decode"] = decode
    graphs = other = eager = graphed = graphed_other = None

    # host <-> device transfer of 255 scattered pages (a 4,080-token prefix): the UVA kernel, the
    # staged copy (copy engine + one scatter; device->host is the kernel's for both), portable
    from storage import HostPool, copy_device_to_host, copy_host_to_device
    from storage.transfer import fastest_host_to_device

    pinned, plain = HostPool(layout, 512), HostPool(layout, 512, pin_memory=False)
    hp, dp = torch.randperm(512)[:255].tolist(), torch.randperm(pool.num_pages)[:255].tolist()
    nbytes = 255 * layout.page_bytes
    for name, host, method in (
        ("uva kernel", pinned, "uva"),
        ("staged copy", pinned, "staged"),
        ("portable", plain, "uva"),
    ):
        h2d = cuda_time(
            lambda host=host, m=method: copy_host_to_device(host, hp, pool, dp, m),
            iters=5,
            warmup=1,
        )
        d2h = cuda_time(
            lambda host=host: copy_device_to_host(pool, dp, host, hp), iters=5, warmup=1
        )
        results[f"transfer_{name.split()[0]}_gbps"] = {
            "h2d": nbytes / h2d / 1e9,
            "d2h": nbytes / d2h / 1e9,
        }
        print(
            f"transfer 255 pages ({nbytes / 2**20:.0f} MiB) {name}: host->device "
            f"{nbytes / h2d / 1e9:.1f} GB/s, device->host {nbytes / d2h / 1e9:.1f} GB/s "
            f"(pinned copy floor {results['floors']['h2d_pinned_gbps']:.1f} GB/s)",
            flush=True,
        )
    pick, timed = fastest_host_to_device(pool, pinned)  # what an engine picks at start-up
    results["engine_h2d_pick"] = {"method": pick, "gbps": timed}
    print(f"the engine's start-up pick: {pick} ({timed})", flush=True)
    pinned = plain = pool = fi = ref = model = None
    torch.cuda.empty_cache()

    # 4. Hugging Face transformers on the same weights
    if hf is not None:
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
                    hf(nxt, past_key_values=cache, use_cache=True).logits.argmax(-1).tolist()

                s = cuda_time(hf_step, iters=20, warmup=3)
            hf_decode[batch] = s * 1e3
            print(f"HF decode batch {batch:>2}: {s * 1e3:.2f} ms/step", flush=True)
            del cache, out
        results["hf_decode_ms"] = hf_decode
        hf = None
        torch.cuda.empty_cache()
    _ttft(results, tokens, hbm, args.profile)
    _engine_decode(results, tokens, layout, w_bytes, hbm)
    _table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


def compare(label: str, got: torch.Tensor, want: torch.Tensor) -> dict:
    rel = ((got - want).norm() / want.norm()).item()
    agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    print(f"{label}: relative error {rel:.2e}, argmax agreement {agree:.0%}", flush=True)
    return {"relative_error": rel, "argmax_agreement": agree}


def hf_twin(model, dev):
    """transformers' Llama over the same (unfused) weight tensors: no second copy."""
    import transformers

    cfg = model.config
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
    return hf.to(dev).eval()


def _ttft(results: dict, tokens, hbm: float, profile: bool = False) -> None:
    """3. TTFT of a 4,096-token prompt through the Engine (CUDA graphs on), with its floors."""
    from radixkv import DEVICE, Engine

    eng = Engine(
        "llama-3-8b",
        device="cuda",
        kv_memory_gb=fit_gb(12.0, weights_gb=16.1),
        host_memory_gb=8,
        remote_url=None,
        max_batch_tokens=8192,
        attention="flashinfer",
    )
    layout, w_bytes = eng.cache.layout, weight_bytes(eng.model)
    eng.generate([tokens(4096)], max_tokens=1)  # warm-up: kernels, allocator
    for _ in range(3):
        eng.generate([tokens(4096)], max_tokens=1)
    prompt = tokens(4096)
    kv = 4096 * layout.page_bytes // PS
    h2d = results["floors"]["h2d_pinned_gbps"] * 1e9
    floors = {
        "cold": None,
        "device": (w_bytes + kv) / hbm * 1e3,
        "host": ((w_bytes + kv) / hbm + kv / h2d) * 1e3,
    }
    ttft = {}
    for label in ("cold", "device", "host"):
        # the first run warms this path's kernels (and caches `prompt` for the device runs);
        # the median of the next three is reported
        runs = []
        for _ in range(4):
            if label == "host":
                eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
            torch.cuda.synchronize()
            runs.append(
                eng.generate([tokens(4096) if label == "cold" else prompt], max_tokens=1)[0]
            )
        r = sorted(runs[1:], key=lambda x: x.ttft_s)[1]
        ttft[label] = {
            "ttft_ms": r.ttft_s * 1e3,
            "runs_ms": [x.ttft_s * 1e3 for x in runs],
            "floor_ms": floors[label],
            "cached_by_tier": r.cached_tokens_by_tier,
        }
        fl = f"floor {floors[label]:.1f} ms" if floors[label] else ""
        each = ", ".join(f"{x.ttft_s * 1e3:.1f}" for x in runs)
        print(
            f"TTFT 4,096 tokens {label:>6}: {r.ttft_s * 1e3:8.1f} ms {fl} cached "
            f"{r.cached_tokens_by_tier} (runs: {each} ms; the first warms up)",
            flush=True,
        )
    results["ttft_4096"] = ttft
    results["ttft_device_parts_ms"] = _ttft_parts(eng, prompt)
    if profile:
        _profile_kernels(lambda: eng.generate([prompt], max_tokens=1), "TTFT device")
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(lambda: [eng.generate([prompt], max_tokens=1) for _ in range(10)])
        print("TTFT device, the host's time over 10 requests (cProfile):", flush=True)
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
    eng.close()


def _ttft_parts(eng, prompt: list[int], repeats: int = 5) -> dict:
    """Where a device-cached prompt's TTFT goes, by the engine's own stages (mean ms): the
    request made and queued, scheduled (admission, match, plan, batch), the forward queued,
    its token waited for (the GPU's remaining time), the outputs applied."""
    core = eng.core
    parts = dict.fromkeys(("request", "schedule", "launch", "wait", "outputs"), 0.0)
    graph = None
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        req = core.make_request(prompt, max_tokens=1)
        core.scheduler.add(req)
        t1 = time.perf_counter()
        batch = core.scheduler.schedule()
        t2 = time.perf_counter()
        graph = next((g for g in core.runner.graphs if g.can_run(batch.forward)), None)
        pending = core.runner.launch(batch.forward)
        t3 = time.perf_counter()
        tokens = pending.tolist()
        t4 = time.perf_counter()
        core.scheduler.process_outputs(batch, tokens, t4 - t2)
        t5 = time.perf_counter()
        for k, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[k] += dt / repeats * 1e3
    parts["tokens_computed"] = len(batch.forward.input_ids)
    parts["ran"] = type(graph).__name__ if graph is not None else "eager"
    print(
        "TTFT device, by stage (ms): "
        + ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in parts.items()
        ),
        flush=True,
    )
    return parts


def _engine_decode(
    results: dict, tokens, layout, w_bytes: int, hbm: float, steps: int = 128
) -> None:
    """Decode steps through the whole engine (scheduler, runner, outputs: what a user gets),
    overlap scheduling on and off, and on with the Triton kernels (batch-1 GEMV, RoPE fused with
    the KV write; where Triton is there), in the same run: batch 1 and 64 over 1,024-token
    prompts, `steps` tokens each, timed from every request's first token to the last one's end."""
    from engine.triton_kernels import triton_kernels_wanted
    from radixkv import Engine

    variants = [("on", False), ("off", False)]
    if triton_kernels_wanted("auto", torch.device("cuda"), torch.bfloat16):
        variants.insert(1, ("on", True))
    else:
        print("engine decode with the Triton kernels: skipped (they do not load here)")
    out = {}
    for overlap, triton_kernels in variants:
        label = f"{overlap}+triton" if triton_kernels else overlap
        eng = Engine(
            "llama-3-8b",
            device="cuda",
            kv_memory_gb=fit_gb(16.0, weights_gb=16.1),
            host_memory_gb=0,
            remote_url=None,
            max_running=64,
            max_batch_tokens=16384,
            attention="flashinfer",
            overlap_schedule=overlap,
            triton_kernels="on" if triton_kernels else "off",
        )
        eng.generate([tokens(64)], max_tokens=8, ignore_eos=True)  # warm-up
        for batch in (1, 64):
            reqs = [
                eng.submit(tokens(1024), max_tokens=steps + 1, ignore_eos=True)
                for _ in range(batch)
            ]
            while any(r.first_token_at is None for r in reqs):
                eng.step()
            torch.cuda.synchronize()
            continued = eng.scheduler.continued_steps
            t = time.perf_counter()
            while eng.core.has_work:
                eng.step()
            ms = (time.perf_counter() - t) / steps * 1e3
            assert all(len(r.output_ids) == steps + 1 for r in reqs)
            kv = batch * (1024 + steps // 2) * layout.page_bytes // PS  # the mean context's KV
            floor = (w_bytes + kv) / hbm * 1e3
            out[f"{label}_{batch}"] = {
                "ms": ms,
                "floor_ms": floor,
                "ratio_to_floor": ms / floor,
                "continued_steps": eng.scheduler.continued_steps - continued,
            }
            print(
                f"engine decode, overlap {label:>9}, batch {batch:>2}: {ms:.2f} ms/step "
                f"({batch / ms * 1e3:,.0f} tokens/s); floor {floor:.2f} ms -> {ms / floor:.2f}x; "
                f"{eng.scheduler.continued_steps - continued} of {steps} steps continued",
                flush=True,
            )
        eng.close()
        eng = None
        torch.cuda.empty_cache()
    results["engine_decode"] = out


def _table(results: dict) -> None:
    f = results["floors"]
    print(
        f"\nfloors measured in this run: HBM {f['hbm_gbps']:,.0f} GB/s, bf16 matmul "
        f"{f['matmul_tflops']:,.0f} TFLOP/s, pinned H2D {f['h2d_pinned_gbps']:.1f} GB/s"
    )
    print("\n| measure | radixkv | floor | ratio to floor | HF transformers |")
    print("|---|---|---|---|---|")
    p = results["prefill"]
    hf_p = results.get("hf_prefill_tokens_per_s")
    print(
        f"| prefill 4 x 2,048 | {p['ms']:.1f} ms ({p['tokens_per_s']:,.0f} tok/s) | {p['floor_ms']:.1f} ms "
        f"| {p['ms'] / p['floor_ms']:.2f}x ({p['fraction_of_matmul_peak']:.0%} of peak) | "
        + (f"{hf_p:,.0f} tok/s |" if hf_p else "not run |")
    )
    hf_d = results.get("hf_decode_ms", {})
    for b, row in results["decode"].items():
        hf_b = (
            f"{hf_d[b]:.2f} ms ({hf_d[b] / row['graph_ms']:.1f}x slower)"
            if b in hf_d
            else "not run"
        )
        print(
            f"| decode step, batch {b} x 1K context | graph {row['graph_ms']:.2f} ms (replay "
            f"{row['graph_replay_only_ms']:.2f}), eager {row['eager_ms']:.2f} ms, other kernel "
            f"{row['other_ms']:.2f} ms | {row['floor_ms']:.2f} ms | {row['ratio_to_floor']:.2f}x | {hf_b} |"
        )
    for k, v in results["ttft_4096"].items():
        fl = (
            f"{v['floor_ms']:.1f} ms | {v['ttft_ms'] / v['floor_ms']:.2f}x"
            if v["floor_ms"]
            else "| "
        )
        print(f"| TTFT 4,096 tokens, {k} | {v['ttft_ms']:.1f} ms | {fl} | |")
    for key, v in results.get("engine_decode", {}).items():
        overlap, b = key.rsplit("_", 1)
        print(
            f"| decode step through the engine, batch {b}, overlap {overlap} | {v['ms']:.2f} ms "
            f"| {v['floor_ms']:.2f} ms | {v['ratio_to_floor']:.2f}x | |"
        )
    g = results["graph_capture"]
    print(f"| CUDA graph capture (64 sizes max) | {g['seconds']:.1f} s, {g['mib']:.0f} MiB | | | |")
    print(f"(decode kernel in the table: flashinfer's {results['decode_kernel']} one)")


if __name__ == "__main__":
    sys.exit(main())
