"""The fast path on a GPU: CUDA-graph decode gives the eager path's tokens; the fused model (merged
projections, flashinfer norms and RoPE) gives the reference model's logits. Skipped without CUDA
and flashinfer."""

from __future__ import annotations

import pytest
import torch

from engine.attention.flashinfer_backend import flashinfer_available

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not flashinfer_available(), reason="needs CUDA and flashinfer"),
]


@pytest.fixture(scope="module")
def small_llama(tmp_path_factory):
    """A random Llama with flashinfer-sized heads (64), saved as a Hugging Face directory."""
    import transformers

    path = tmp_path_factory.mktemp("gpu-llama")
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(
        vocab_size=512,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=3,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        initializer_range=0.05,
    )
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return path


def _engine(path, **kw):
    from radixkv import Engine

    return Engine(
        str(path),
        device="cuda",
        dtype="bfloat16",
        attention="flashinfer",
        kv_memory_gb=0.05,
        host_memory_gb=0,
        remote_url=None,
        max_running=8,
        **kw,
    )


def test_graph_decode_gives_the_eager_tokens_over_256_steps(small_llama):
    """Three sequences replay the size-4 graph: its padded row writes only the scratch page, so
    the real rows' tokens equal the eager path's, step for step."""
    prompts = [[(7 * i + j) % 500 + 1 for j in range(30 + 11 * i)] for i in range(3)]
    runs = {}
    for graphs in (True, False):
        with _engine(small_llama, cuda_graph=graphs, check_integrity=True) as eng:
            assert (eng.core.runner.graphs is not None) == graphs
            out = eng.generate(prompts, max_tokens=256, ignore_eos=True)
            runs[graphs] = [r.token_ids for r in out]
    assert all(len(t) == 256 for t in runs[True])
    assert runs[True] == runs[False]


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
