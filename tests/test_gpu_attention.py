"""flashinfer vs the torch reference backend on one model and pool (skipped without CUDA/flashinfer)."""

import pytest
import torch

from engine.attention.flashinfer_backend import flashinfer_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not flashinfer_available(), reason="needs CUDA and flashinfer"),
]


def test_flashinfer_matches_reference_on_mixed_and_decode_batches():
    from engine.attention.flashinfer_backend import FlashInferPagedAttention
    from engine.forward_batch import ForwardBatch
    from tests.paged_runner import small_cuda_llama

    model, pool, ref = small_cuda_llama()
    fi = FlashInferPagedAttention(pool, 8, 2, 64)
    toks = torch.randint(0, 256, (200,)).tolist()
    model(ForwardBatch.build([(toks[:64], 0, [0, 1, 2, 3, 4])], 16, "cuda"), ref)  # a cached prefix
    mixed = [
        (toks[64:90], 64, [0, 1, 2, 3, 4, 5]),
        (toks[100:150], 0, [10, 11, 12, 13]),
        (toks[:1], 40, [20, 21, 22]),
    ]
    for batch in (mixed, [(toks[90:91], 90, [0, 1, 2, 3, 4, 5]), (toks[:1], 40, [20, 21, 22])]):
        want = model(ForwardBatch.build(batch, 16, "cuda"), ref)
        got = model(ForwardBatch.build(batch, 16, "cuda"), fi)
        assert ((got - want).norm() / want.norm()).item() < 2e-2
        assert torch.equal(got.argmax(-1), want.argmax(-1))


LLAMA_ATTENTION = (32, 8, 128, 16)  # llama-3-8b's query heads, KV heads, head dim; page size


def _random_layer_pool():
    """One layer of llama-3-8b-shaped bfloat16 KV pages (1,024 pages), random (seed 0)."""
    from storage import DevicePool, KVLayout

    torch.manual_seed(0)
    _, kv_heads, dim, ps = LLAMA_ATTENTION
    pool = DevicePool(KVLayout(1, kv_heads, dim, ps, torch.bfloat16), 1024, "cuda")
    pool.data.normal_()
    return pool


def test_a_second_plan_of_one_wrapper_waits_for_the_first_plans_copy():
    """flashinfer's plan() copies its work split from a pinned host buffer to the GPU on the
    stream; a second plan of the same wrapper must not rewrite that buffer before the copy ran
    (engine/attention/plan_fence.py). The stream is held busy, then two chunks over different
    cached prefixes are planned and run back to back, as a prompt's middle prefill chunks are;
    each must equal the same chunk planned and run alone."""
    from engine.attention.flashinfer_backend import FlashInferPagedAttention
    from engine.forward_batch import ForwardBatch

    heads, kv_heads, dim, ps = LLAMA_ATTENTION
    pool = _random_layer_pool()
    fi = FlashInferPagedAttention(pool, heads, kv_heads, dim)
    chunks = [  # (new tokens, cached prefix, pages): split KV over long prefixes, unlike shapes
        ([1] * 512, 6000, list(range(0, 408))),
        ([1] * 96, 9000, list(range(1023, 450, -1))),
    ]
    batches = [ForwardBatch.build([c], ps, "cuda") for c in chunks]
    qs = [torch.randn(len(c[0]), heads, dim, device="cuda", dtype=torch.bfloat16) for c in chunks]
    alone = []
    for q, b in zip(qs, batches, strict=True):
        alone.append(fi.forward(0, q, b).clone())
        torch.cuda.synchronize()
    torch.cuda._sleep(2_000_000_000)  # about a second of a busy stream: the copies wait behind it
    raced = [fi.forward(0, q, b) for q, b in zip(qs, batches, strict=True)]
    torch.cuda.synchronize()
    for got, want in zip(raced, alone, strict=True):
        assert torch.equal(got, want)


def test_the_hopper_kernel_over_a_prefix_gives_fa2s_chunks():
    """`prefix_kernel="auto"` (flashinfer's Hopper kernel on an H100/H200) runs a prompt's
    chunks over its cached prefix, planned back to back on a busy stream as the engine runs
    them, and each equals FA2's (the default) to bf16 rounding; a kernel name it does not know
    is refused."""
    from engine.attention.flashinfer_backend import FlashInferPagedAttention
    from engine.forward_batch import ForwardBatch

    (heads, kv_heads, dim, ps), chunk = LLAMA_ATTENTION, 2048
    pool = _random_layer_pool()
    table = torch.randperm(1024).tolist()
    qs = [torch.randn(chunk, heads, dim, device="cuda", dtype=torch.bfloat16) for _ in range(4)]
    outs = {}
    for kernel in ("fa2", "auto"):
        fi = FlashInferPagedAttention(pool, heads, kv_heads, dim, prefix_kernel=kernel)
        batches = [
            ForwardBatch.build(
                [([1] * chunk, i * chunk, table[: (i + 1) * chunk // ps])], ps, "cuda"
            )
            for i in range(4)
        ]
        torch.cuda.synchronize()
        torch.cuda._sleep(1_000_000_000)
        outs[kernel] = [fi.forward(0, q, b) for q, b in zip(qs, batches, strict=True)]
        torch.cuda.synchronize()
    for got, want in zip(outs["auto"], outs["fa2"], strict=True):
        assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 2e-2
    with pytest.raises(ValueError, match="prefix_kernel"):
        FlashInferPagedAttention(pool, heads, kv_heads, dim, prefix_kernel="fa3")
