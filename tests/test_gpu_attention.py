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
