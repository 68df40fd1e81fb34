"""FP8 KV pages on a GPU (`kv_cache_dtype="fp8_e4m3"`): flashinfer attends over float8 pages
as the torch reference does over the same pages, stays close to bfloat16 pages, and an engine
decodes them by CUDA-graph replay with the eager path's tokens. Skipped without CUDA and
flashinfer, and on GPUs older than compute capability 8.9."""

from __future__ import annotations

import pytest
import torch

from engine.attention.flashinfer_backend import flashinfer_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not flashinfer_available(), reason="needs CUDA and flashinfer"),
    pytest.mark.skipif(
        flashinfer_available() and torch.cuda.get_device_capability() < (8, 9),
        reason="float8 needs compute capability 8.9",
    ),
]


def _logits(model, pool, backend, toks):
    """A prefill of two sequences then a decode step of both: the decode's logits."""
    from engine.forward_batch import ForwardBatch

    pool.data.zero_()
    tables = [[0, 1, 2, 3, 4], [10, 11, 12, 13]]
    model(ForwardBatch.build([(toks[:70], 0, tables[0]), (toks[70:120], 0, tables[1])], 16, "cuda"),
          backend)  # fmt: skip
    step = [([toks[120]], 70, tables[0]), ([toks[121]], 50, tables[1])]
    return model(ForwardBatch.build(step, 16, "cuda"), backend).float()


def test_flashinfer_over_fp8_pages_matches_the_reference_and_stays_near_bf16():
    from engine.attention import TorchPagedAttention
    from engine.attention.flashinfer_backend import FlashInferPagedAttention
    from engine.attention.kv_write import FP8
    from storage import DevicePool, KVLayout
    from tests.paged_runner import small_cuda_llama

    model, bf16_pool, _ = small_cuda_llama()
    model.fuse()
    fp8_pool = DevicePool(KVLayout(2, 2, 64, 16, FP8), 64, "cuda")
    toks = torch.randint(0, 256, (122,), generator=torch.Generator().manual_seed(2)).tolist()
    bf16 = _logits(model, bf16_pool, FlashInferPagedAttention(bf16_pool, 8, 2, 64), toks)
    fp8 = _logits(model, fp8_pool, FlashInferPagedAttention(fp8_pool, 8, 2, 64), toks)
    assert fp8_pool.data.dtype == FP8 and fp8_pool.data.float().abs().sum() > 0
    ref = _logits(model, fp8_pool, TorchPagedAttention(fp8_pool, 8, 2, 64), toks)
    assert ((fp8 - ref).norm() / ref.norm()).item() < 2e-2  # the same pages, two kernels
    err = ((fp8 - bf16).norm() / bf16.norm()).item()
    assert 0 < err < 5e-2, err  # lossy, but by float8's mantissa only


def test_an_fp8_engine_decodes_in_graphs_with_the_eager_tokens(tmp_path):
    """Graphs (flashinfer's decode over float8 pages, the fused RoPE-and-store saturating into
    them) against the eager path: the same tokens over 64 steps, pages owned once."""
    from engine.attention.kv_write import FP8
    from radixkv import Engine
    from tests.tiny_model import GPU_LLAMA, save_llama

    save_llama(tmp_path, 5, **GPU_LLAMA, num_hidden_layers=2, max_position_embeddings=1024)
    prompts = [[(7 * i + j) % 500 + 1 for j in range(30 + 11 * i)] for i in range(3)]
    runs = {}
    for graphs in (True, False):
        with Engine(
            str(tmp_path), device="cuda", dtype="bfloat16", attention="flashinfer",
            kv_cache_dtype="fp8_e4m3", kv_memory_gb=0.05, host_memory_gb=0, remote_url=None,
            max_running=8, cuda_graph=graphs, check_integrity=True,
        ) as eng:  # fmt: skip
            assert eng.cache.device_pool.data.dtype == FP8
            assert bool(eng.core.runner.graphs) == graphs
            out = eng.generate(prompts, max_tokens=64, ignore_eos=True)
            runs[graphs] = [r.token_ids for r in out]
    assert all(len(t) == 64 for t in runs[True])
    assert runs[True] == runs[False]


def test_the_fused_rope_store_writes_fp8_pages_as_to_kv_does():
    """The Triton RoPE-and-store kernel on the GPU (its float8 cast rounds as the hardware
    does; the CPU interpreter's does not): K within one float8 step of RoPE then `to_kv`, V
    saturated and rounded exactly as `to_kv`, nothing written outside the token's slots."""
    pytest.importorskip("triton")
    from engine.attention.fused_rope_kv import rope_store_kv
    from engine.attention.kv_write import FP8, store_kv
    from engine.rope import apply_rotary

    g = torch.Generator().manual_seed(0)
    t, hq, hkv, d, pages, ps = 5, 8, 2, 128, 6, 16
    qkv = torch.randn(t, (hq + 2 * hkv) * d, generator=g).to("cuda", torch.bfloat16)
    qkv[:, (hq + hkv) * d :] *= 300  # part of V past float8's +-448
    pos = torch.tensor([0, 9, 100, 517, 4095], device="cuda")
    inv = 1.0 / (10000 ** (torch.arange(0, d, 2, device="cuda").float() / d))
    angles = torch.arange(4096, device="cuda").float()[:, None] * inv[None]
    table = torch.cat((angles.cos(), angles.sin()), -1)
    cos, sin = (torch.cat((f(angles[pos]),) * 2, -1) for f in (torch.cos, torch.sin))
    out_pages = torch.tensor([2, 4, 0, 5, 1], device="cuda")
    offs = torch.tensor([1, 15, 2, 0, 7], device="cuda")
    k = qkv.float()[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(t, hkv, d)
    want = torch.zeros(pages, 2, ps, hkv, d, dtype=FP8, device="cuda")
    store_kv(want, out_pages, offs, apply_rotary(k, cos, sin).to(torch.bfloat16), v)
    got = torch.zeros_like(want)
    rope_store_kv(qkv.clone(), pos, table, got, out_pages, offs, hq, hkv, d)
    g8, w8 = got.float(), want.float()
    assert not g8.isnan().any() and g8.abs().max() == 448
    assert torch.equal(g8[:, 1], w8[:, 1])  # V: a cast, no arithmetic
    assert ((g8[:, 0] - w8[:, 0]).abs() <= w8[:, 0].abs() / 8 + 2.0**-9).all()  # K: one step
    written = torch.zeros(pages, ps, dtype=torch.bool, device="cuda")
    written[out_pages, offs] = True
    assert not g8.permute(0, 2, 1, 3, 4)[~written].any()
