"""The fast path on a GPU: CUDA-graph decode gives the eager path's tokens; the fused model (merged
projections, flashinfer norms and RoPE) gives the reference model's logits. Skipped without CUDA
and flashinfer."""

from __future__ import annotations

import pytest
import torch

from engine.attention.flashinfer_backend import flashinfer_available
from tests.tiny_model import GPU_LLAMA, save_llama

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not flashinfer_available(), reason="needs CUDA and flashinfer"),
]


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """A random Llama with flashinfer-sized heads (64), saved as a Hugging Face directory."""
    path = tmp_path_factory.mktemp("gpu-llama")
    save_llama(path, 5, **GPU_LLAMA, num_hidden_layers=3, max_position_embeddings=2048)
    return path


def _engine(path, **kw):
    from radixkv import Engine

    options = dict(
        device="cuda",
        dtype="bfloat16",
        attention="flashinfer",
        kv_memory_gb=0.05,
        host_memory_gb=0,
        remote_url=None,
        max_running=8,
    )
    return Engine(str(path), **{**options, **kw})


def test_graph_decode_gives_the_eager_tokens_over_256_steps(small_llama):
    """Three sequences replay the size-4 graph: its padded row writes only the scratch page, so
    the real rows' tokens equal the eager path's, step for step (flashinfer's and cuBLAS's
    kernels; the Triton ones' test is next)."""
    prompts = [[(7 * i + j) % 500 + 1 for j in range(30 + 11 * i)] for i in range(3)]
    runs = {}
    for graphs in (True, False):
        with _engine(
            small_llama, cuda_graph=graphs, triton_kernels="off", check_integrity=True
        ) as eng:
            assert bool(eng.core.runner.graphs) == graphs
            out = eng.generate(prompts, max_tokens=256, ignore_eos=True)
            runs[graphs] = [r.token_ids for r in out]
    assert all(len(t) == 256 for t in runs[True])
    assert runs[True] == runs[False]


def test_the_triton_kernels_graph_decode_gives_their_eager_tokens_over_256_steps(small_llama):
    """With the Triton kernels (batch-1 GEMV, RoPE fused with the KV write), a CUDA-graph decode
    of one sequence gives the eager path's tokens over 256 steps; so do three sequences (the
    fused RoPE and cuBLAS), and the KV pages stay owned once."""
    pytest.importorskip("triton")
    prompts = [[(7 * i + j) % 500 + 1 for j in range(30 + 11 * i)] for i in range(3)]
    for batch in (prompts[:1], prompts):
        runs = {}
        for graphs in (True, False):
            with _engine(
                small_llama, cuda_graph=graphs, triton_kernels="on", check_integrity=True
            ) as eng:
                assert eng.core.model.lm_head.__class__.__name__ == "GemvLinear"
                out = eng.generate(batch, max_tokens=256, ignore_eos=True)
                runs[graphs] = [r.token_ids for r in out]
        assert all(len(t) == 256 for t in runs[True])
        assert runs[True] == runs[False]


def test_overlapped_decode_gives_the_serial_tokens_over_256_steps(small_llama):
    """Overlap scheduling on the GPU: decode steps queued on the device's tokens before the host
    reads them give the tokens of steps read one by one, with one request ending on a stop
    token while the others go on (its queued row is dropped, its pages freed once)."""
    prompts = [[(5 * i + 3 * j) % 500 + 1 for j in range(40 + 9 * i)] for i in range(4)]
    with _engine(small_llama, overlap_schedule="off") as eng:
        serial = [r.token_ids for r in eng.generate(prompts, max_tokens=256, ignore_eos=True)]
    stop = serial[2][100]
    runs = {}
    for overlap in ("off", "on"):
        with _engine(small_llama, overlap_schedule=overlap, check_integrity=True) as eng:
            out = eng.generate(prompts, max_tokens=256, ignore_eos=True, stop_token_ids=(stop,))
            runs[overlap] = [r.token_ids for r in out]
            if overlap == "on":
                assert eng.scheduler.continued_steps > 200
    assert runs["on"] == runs["off"]
    assert len(runs["on"][2]) <= 101 and runs["on"][2][-1] == stop


def test_fused_model_matches_the_reference_model():
    from engine.forward_batch import ForwardBatch
    from tests.paged_runner import small_cuda_llama

    model, pool, ref = small_cuda_llama()
    toks = torch.randint(0, 256, (120,)).tolist()
    batch = [(toks[:70], 0, [0, 1, 2, 3, 4]), (toks[70:120], 0, [10, 11, 12, 13])]
    want = model(ForwardBatch.build(batch, 16, "cuda"), ref)
    model.fuse()
    assert hasattr(model.model.layers[0].self_attn, "qkv_proj")
    got = model(ForwardBatch.build(batch, 16, "cuda"), ref)
    assert ((got - want).norm() / want.norm()).item() < 2e-2
    assert (got.argmax(-1) == want.argmax(-1)).float().mean().item() == 1.0


def test_extend_graph_gives_the_eager_logits():
    """One sequence's extends of 2..64 tokens over prefixes of 0..200 tokens: the graph of the
    next size up (its padding sequence on the scratch page) gives the eager logits and writes
    the same KV into the sequence's pages."""
    from engine.attention.flashinfer_backend import FlashInferPagedAttention
    from engine.extend_graph import ExtendGraphs
    from engine.forward_batch import ForwardBatch
    from tests.paged_runner import small_cuda_llama

    model, pool, _ = small_cuda_llama()
    model.fuse()
    fi = FlashInferPagedAttention(pool, 8, 2, 64)
    graphs = ExtendGraphs(model, pool, 64, 1024)
    assert graphs.sizes == [16, 32, 64]
    g = torch.Generator().manual_seed(3)
    table = list(range(1, 17))  # 256 tokens; page 0 is not the scratch page
    assert pool.scratch_page not in table
    for prefix, n in [(0, 2), (0, 16), (16, 17), (37, 5), (100, 64), (200, 31)]:
        toks = torch.randint(0, 256, (prefix + n,), generator=g).tolist()
        batch = [(toks[prefix:], prefix, table)]

        def fill_prefix(toks=toks, prefix=prefix):
            pool.data[:, table] = 0  # each run must write this sequence's KV itself
            if prefix:
                model(ForwardBatch.build([(toks[:prefix], 0, table)], 16, "cuda"), fi)

        fill_prefix()
        want = model(ForwardBatch.build(batch, 16, "cuda"), fi)
        kv_want = pool.data[:, table].clone()
        fb = ForwardBatch.build(batch, 16, "cuda")
        assert graphs.can_run(fb)
        fill_prefix()
        got = graphs.run(fb)
        assert got.shape == want.shape == (1, 256)
        assert torch.allclose(got, want, atol=2e-2, rtol=2e-2), (prefix, n)
        kv_diff = (pool.data[:, table].float() - kv_want.float()).abs().max().item()
        assert torch.equal(pool.data[:, table], kv_want), (prefix, n, kv_diff)
    one = ForwardBatch.build([([1], 5, table)], 16, "cuda")
    two = ForwardBatch.build([([1, 2], 0, table), ([3, 4], 0, list(range(20, 24)))], 16, "cuda")
    long = ForwardBatch.build([(list(range(65)), 0, table)], 16, "cuda")
    assert not any(graphs.can_run(b) for b in (one, two, long))


def test_engine_replays_the_extend_graph_and_gives_the_eager_tokens(small_llama):
    """A second prompt sharing a cached prefix runs its short extend through the graph; its
    tokens equal the eager engine's."""
    from engine.extend_graph import ExtendGraphs

    base = [(5 * j) % 500 + 1 for j in range(100)]
    prompts = [base, base + [7, 8, 9], base[:64] + list(range(200, 230))]
    runs = {}
    for graphs in (True, False):
        with _engine(small_llama, cuda_graph=graphs, check_integrity=True) as eng:
            replays = []
            if graphs:
                extend = next(g for g in eng.core.runner.graphs if isinstance(g, ExtendGraphs))
                real_run = extend.run
                extend.run = lambda b, seen=replays, run=real_run: seen.append(b) or run(b)
            runs[graphs] = [
                eng.generate([p], max_tokens=24, ignore_eos=True)[0].token_ids for p in prompts
            ]
            if graphs:  # cold: 100 tokens; then 7 past the 6 cached pages; then 30 past 4
                assert [(b.prefix_lens[0], b.extend_lens[0]) for b in replays] == [
                    (0, 100),
                    (96, 7),
                    (64, 30),
                ]
    assert runs[True] == runs[False]


def test_admission_never_overcommits_in_a_burst_of_200_requests(small_llama):
    """200 requests at once into a device tier that holds a handful of them, on the fast path
    (CUDA graphs, flashinfer): admission by memory queues them instead of preempting; every
    request finishes with its tokens and every page comes back."""
    prompts = [[(13 * i + j) % 500 + 1 for j in range(40 + (i * 7) % 90)] for i in range(200)]
    with _engine(small_llama, kv_memory_gb=0.002, max_running=32, check_integrity=True) as eng:
        pages = eng.cache.device_pool.num_pages
        assert pages * eng.cache.page_size < 200 * 60  # far below what the burst asks for
        out = eng.generate(prompts, max_tokens=24, ignore_eos=True)
        assert all(r.finish_reason == "length" and len(r.token_ids) == 24 for r in out)
        assert eng.scheduler.preemptions <= 0.02 * len(prompts), eng.scheduler.preemptions
        report = eng.cache.check_integrity()
        assert report["device"]["locked"] == 0 and report["device"]["request_or_inflight"] == 0


def test_a_host_hit_waits_for_its_load_and_replays_the_extend_graph(small_llama):
    """A prompt whose prefix is on the host tier: its short extend waits for the whole load and
    replays the graph (not eager kernels layer by layer); tokens equal the eager engine's."""
    from engine.extend_graph import ExtendGraphs
    from radixkv import DEVICE

    base = [(3 * j) % 500 + 1 for j in range(160)]
    runs = {}
    for graphs in (True, False):
        with _engine(
            small_llama, cuda_graph=graphs, host_memory_gb=0.05, check_integrity=True
        ) as eng:
            replays = []
            if graphs:
                extend = next(g for g in eng.core.runner.graphs if isinstance(g, ExtendGraphs))
                real_run = extend.run
                extend.run = lambda b, seen=replays, run=real_run: seen.append(b) or run(b)
            first = eng.generate([base], max_tokens=8, ignore_eos=True)[0].token_ids
            eng.cache.evict(DEVICE, eng.cache.device_pool.num_pages)
            hit = eng.generate([base + [11, 12, 13]], max_tokens=16, ignore_eos=True)[0]
            assert hit.cached_tokens_by_tier["host"] == 160
            runs[graphs] = (first, hit.token_ids)
            if graphs:
                assert [(b.prefix_lens[0], b.extend_lens[0]) for b in replays][-1] == (160, 3)
    assert runs[True] == runs[False]


def test_start_up_warms_the_eager_kernels_on_the_scratch_page_only(small_llama):
    """The engine runs its eager attention paths once at start-up; they write only the scratch
    page, so no page a request could own changes, and the first request's tokens equal a later
    identical request's."""
    from radixkv import DEVICE

    with _engine(small_llama) as eng:
        assert eng.core.warm_up_s > 0
        pool = eng.cache.device_pool
        owned = pool.data[:, : pool.num_pages]
        owned.copy_(torch.randn(owned.shape, generator=torch.Generator().manual_seed(0)))
        before = owned.clone()
        assert eng.core.runner.warm_up(pool) > 0
        assert torch.equal(pool.data[:, : pool.num_pages], before)
        prompt = [(7 * j) % 500 + 1 for j in range(300)]
        first = eng.generate([prompt], max_tokens=16, ignore_eos=True)[0].token_ids
        eng.cache.evict(DEVICE, pool.num_pages)
        assert eng.generate([prompt], max_tokens=16, ignore_eos=True)[0].token_ids == first


def test_a_long_prompt_prefills_in_chunks_over_its_prefix(tmp_path):
    """A 9,418-token prompt in 2,048-token chunks (each after the first over a cached prefix,
    llama-3-8b's head sizes): on an H100 such a prompt faulted on its third chunk (2026-12-07),
    likely two plans of one wrapper in flight (engine/attention/plan_fence.py; the race itself
    is tested in test_gpu_attention.py); the first token is the torch backend's."""
    # head_dim 128 as llama-3-8b's, a query group of 4
    config = {**GPU_LLAMA, "vocab_size": 1024, "hidden_size": 1024, "intermediate_size": 1024}
    save_llama(tmp_path, 7, **config, num_hidden_layers=2, max_position_embeddings=16384)
    prompt = torch.randint(1, 1024, (9418,), generator=torch.Generator().manual_seed(1)).tolist()
    first = {}
    for attention in ("flashinfer", "torch"):
        with _engine(
            tmp_path, attention=attention, kv_memory_gb=0.5, max_batch_tokens=2048,
            check_integrity=True,
        ) as eng:  # fmt: skip
            out = eng.generate([prompt], max_tokens=4, ignore_eos=True)[0]
            torch.cuda.synchronize()
            assert len(out.token_ids) == 4
            first[attention] = out.token_ids[0]
    assert first["flashinfer"] == first["torch"]
