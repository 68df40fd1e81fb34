"""The CPU's 4-bit path runs the default model's own Q4_1 weights: the blocks read from the GGUF
rebuild exactly what gguf's dequantizer gives; the int4 kernel matches the dense product to
bfloat16 precision (merged layers included); the engine picks it for the default model in
bfloat16 and the answer stays right."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.int4_linear import (
    DENSE_ROWS,
    KEPT_DENSE_ROWS,
    Int4Linear,
    int4_available,
    keep_dense_copies,
    q4_1_blocks,
)
from tests.conftest import cpu_engine

pytestmark = pytest.mark.skipif(not int4_available(), reason="no int4 CPU kernel in this torch")


@pytest.fixture(scope="module")
def q4_tensors():
    from gguf import GGUFReader

    from engine.default_model import default_model_path

    reader = GGUFReader(str(default_model_path()))
    return [t for t in reader.tensors if t.tensor_type.name == "Q4_1"][:3]


def test_blocks_rebuild_the_dequantized_weights_exactly(q4_tensors):
    from gguf.quants import dequantize

    for t in q4_tensors:
        want = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)
        q, d, m = q4_1_blocks(t.data, *want.shape)
        rows, cols = want.shape
        got = q.reshape(rows, cols // 32, 32).float() * d[..., None] + m[..., None]
        assert torch.equal(got.reshape(rows, cols), torch.from_numpy(want))


def test_int4_matmul_matches_the_dense_product(q4_tensors):
    from gguf.quants import dequantize

    gen = torch.Generator().manual_seed(0)
    parts, dense = [], []
    for t in q4_tensors[:2]:
        w = np.array(dequantize(t.data, t.tensor_type), dtype=np.float32)
        if dense and w.shape[1] != dense[0].shape[1]:
            continue
        parts.append(q4_1_blocks(t.data, *w.shape))
        dense.append(torch.from_numpy(w))
    layer = Int4Linear.concat(parts)
    weight = torch.cat(dense)
    for rows in (1, 3, 8):
        x = torch.randn(rows, weight.shape[1], generator=gen).bfloat16()
        want = x.float() @ weight.t()
        got = layer(x).float()
        assert got.shape == want.shape
        assert ((got - want).norm() / want.norm()) < 1e-2  # scales in bf16, output in bf16


def test_many_rows_multiply_by_the_exact_dequantized_weights(q4_tensors):
    """From DENSE_ROWS rows on, the layer multiplies densely by the GGUF's own values (what
    gguf's dequantizer gives, to the bit), dequantized per product or kept once."""
    from gguf.quants import dequantize

    t = q4_tensors[0]
    w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
    layer = Int4Linear(*q4_1_blocks(t.data, *w.shape))
    assert torch.equal(layer.dense_weight(torch.float32), w)
    x = torch.randn(DENSE_ROWS + 5, w.shape[1], generator=torch.Generator().manual_seed(1))
    want = x @ w.t()
    per_product = layer(x)
    torch.testing.assert_close(per_product, want, rtol=1e-4, atol=1e-4)  # summation order
    assert keep_dense_copies(layer, torch.float32) == w.numel() * 4
    kept = layer.dense.to_dense() if layer.dense.is_mkldnn else layer.dense  # packed: oneDNN's
    assert torch.equal(kept, w)
    torch.testing.assert_close(layer(x), per_product, rtol=1e-4, atol=1e-4)
    few = layer(x[: KEPT_DENSE_ROWS - 1])  # the 4-bit kernel: bfloat16 scales and output
    assert not torch.equal(few, want[: KEPT_DENSE_ROWS - 1])
    assert ((few - want[: KEPT_DENSE_ROWS - 1]).norm() / want.norm()) < 1e-2
    assert keep_dense_copies(Int4Linear(*q4_1_blocks(t.data, *w.shape)), torch.float32, 0) == 0


def test_the_default_model_in_bfloat16_runs_4_bit_and_answers_right():

    with cpu_engine(dtype="bfloat16", kv_memory_gb=0.1) as eng:
        mlp = eng.model.model.layers[0].mlp
        assert isinstance(mlp.gate_up_proj, Int4Linear) and isinstance(mlp.down_proj, Int4Linear)
        # its first token's margin is 1.5-1.6 nats in float32 and bfloat16 (the bare question's
        # is 0.08 in float32 and a tie in bfloat16: a coin toss for a test)
        question = [
            {"role": "user", "content": "What is the capital of France? Answer in one word."}
        ]
        r = eng.chat(question, max_tokens=12, temperature=0)  # greedy: no sampled miss
        assert "Paris" in r.text
    with cpu_engine(
        dtype="bfloat16",
        cpu_int4=False,
        kv_memory_gb=0.1,
    ) as dense:
        assert isinstance(dense.model.model.layers[0].mlp.down_proj, torch.nn.Linear)
