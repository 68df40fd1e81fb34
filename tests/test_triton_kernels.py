"""The Triton decode kernels' arithmetic (on by default on CUDA), in Triton's CPU interpreter
(TRITON_INTERPRET=1, set before Triton is imported: hence a subprocess). Skipped where Triton is
not installed; their speed is measured on a GPU by benchmarks/gpu_small_kernels.py."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parent.parent


def run_interpreted(code: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_gemv_equals_a_float32_product_to_bf16_rounding():
    run_interpreted(
        """
        import torch
        from engine.gemv_triton import gemv
        torch.manual_seed(0)
        for n, k in ((40, 96), (33, 130), (64, 512)):  # rows and columns off the block sizes
            w = torch.randn(n, k, dtype=torch.bfloat16)
            x = torch.randn(1, k, dtype=torch.bfloat16)
            ref = (x.float() @ w.float().T).to(torch.bfloat16).float()
            for cfg in ({"BLOCK_N": 8, "BLOCK_K": 32}, {"BLOCK_N": 16, "BLOCK_K": 64}):
                y = gemv(x, w, cfg)
                assert y.shape == (1, n) and y.dtype == torch.bfloat16
                ulp = ref.abs().clamp_min(1.0) * 2.0**-7  # one bf16 step at that magnitude
                assert ((y.float() - ref).abs() <= ulp).all(), (n, k, cfg)
            # the down projection's form: x = silu(gate) * up computed in its loads. The
            # interpreter truncates its casts to bf16 (the GPU rounds to nearest), so the
            # rounded activations drift together: compared by relative error (0.5-0.6% here;
            # gate and up swapped: 60-85%)
            gate_up = torch.randn(1, 2 * k, dtype=torch.bfloat16)
            gate, up = gate_up.float().chunk(2, -1)
            ref = (gate / (1 + torch.exp(-gate)) * up) @ w.float().T
            y = gemv(gate_up, w, {"BLOCK_N": 16, "BLOCK_K": 32}, silu_mul=True)
            assert y.shape == (1, n)
            assert ((y.float() - ref).norm() / ref.norm()).item() < 1.5e-2, (n, k, "silu_mul")
        try:
            gemv(torch.randn(1, 5), torch.randn(3, 4))
        except ValueError:
            pass
        else:
            raise AssertionError("a length mismatch must raise ValueError")
        """
    )


def test_fused_rope_and_kv_write_equal_rope_then_the_index_put():
    run_interpreted(
        """
        import torch
        from engine.attention.fused_rope_kv import rope_store_kv
        from engine.attention.kv_write import store_kv
        from engine.rope import apply_rotary
        torch.manual_seed(0)
        T, HQ, HKV, D, P, PS = 3, 4, 2, 16, 5, 4
        qkv = torch.randn(T, (HQ + 2 * HKV) * D, dtype=torch.bfloat16)
        pos = torch.tensor([0, 7, 19])
        inv = 1.0 / (10000 ** (torch.arange(0, D, 2).float() / D))
        angles = torch.arange(32).float()[:, None] * inv[None]
        table = torch.cat((angles.cos(), angles.sin()), -1)
        cos = torch.cat((angles[pos].cos(),) * 2, -1)
        sin = torch.cat((angles[pos].sin(),) * 2, -1)
        pages, offs = torch.tensor([2, 4, 0]), torch.tensor([1, 3, 2])
        q, k, v = qkv.float().split([HQ * D, HKV * D, HKV * D], -1)
        qr = apply_rotary(q.view(T, HQ, D), cos, sin).to(torch.bfloat16)
        kr = apply_rotary(k.view(T, HKV, D), cos, sin).to(torch.bfloat16)
        want = torch.zeros(P, 2, PS, HKV, D, dtype=torch.bfloat16)
        store_kv(want, pages, offs, kr, v.view(T, HKV, D).to(torch.bfloat16))
        got, x = torch.zeros_like(want), qkv.clone()
        rope_store_kv(x, pos, table, got, pages, offs, HQ, HKV, D)
        one_ulp = 2.0**-7 * 4  # values here stay below 4 in magnitude
        assert (x[:, : HQ * D].view(T, HQ, D).float() - qr.float()).abs().max() <= one_ulp
        assert (got.float() - want.float()).abs().max() <= one_ulp
        assert torch.equal(got[:, 1], want[:, 1])  # v is copied, not computed
        assert torch.equal(x[:, (HQ + HKV) * D :], qkv[:, (HQ + HKV) * D :])
        untouched = torch.ones(P, PS, dtype=torch.bool)
        untouched[pages, offs] = False
        assert not got[:, :, :, :, :].permute(0, 2, 1, 3, 4)[untouched].any()
        # float8 pages: saturated at +-448 like the index_put path (a plain cast gives NaN)
        from engine.attention.kv_write import FP8
        big = qkv.clone()
        big[:, (HQ + HKV) * D :] *= 1000  # v far past float8's range
        want8 = torch.zeros(P, 2, PS, HKV, D, dtype=FP8)
        store_kv(want8, pages, offs, kr, big[:, (HQ + HKV) * D :].view(T, HKV, D))
        got8 = torch.zeros_like(want8)
        rope_store_kv(big, pos, table, got8, pages, offs, HQ, HKV, D)
        assert not got8.float().isnan().any() and got8.float().abs().max() == 448
        # the interpreter's float8 cast rounds wrongly (it drops a rounding carry: 1.945 -> 1.0,
        # 124 -> 64, where the GPU gives 2.0 and 128), so here the saturated values exactly
        # and the others' signs; tests/test_gpu_fp8.py checks the values on a GPU
        got, want = got8[pages, :, offs].float(), want8[pages, :, offs].float()
        saturated = want.abs() == 448
        assert saturated.any() and torch.equal(got[saturated], want[saturated])
        assert torch.equal(got.sign(), want.sign())
        """
    )


def test_a_model_on_the_triton_kernels_gives_the_torch_paths_logits_and_kv():
    run_interpreted(
        """
        import torch
        from engine.attention import TorchPagedAttention
        from engine.forward_batch import ForwardBatch
        from engine.gemv_triton import GemvLinear
        from engine.llama import CausalLM
        from engine.model_config import ModelConfig
        from engine.rope import cos_sin_table
        from storage import DevicePool, KVLayout

        torch.manual_seed(0)
        cfg = ModelConfig(arch="llama", vocab_size=256, hidden_size=256, intermediate_size=512,
                          num_layers=2, num_heads=8, num_kv_heads=2, head_dim=64)
        model = CausalLM(cfg).to(torch.bfloat16).eval().fuse()
        pool = DevicePool(KVLayout(2, 2, 64, 16, torch.bfloat16), 16, "cpu")
        backend = TorchPagedAttention(pool, 8, 2, 64)
        prompt = torch.randint(0, 256, (40,)).tolist()
        table = [1, 2, 3, 4]

        def run():  # a 40-token prefill, then one decode step
            pool.data.zero_()
            with torch.no_grad():
                a = model(ForwardBatch.build([(prompt, 0, table)], 16, "cpu"), backend)
                b = model(ForwardBatch.build([([7], 40, table)], 16, "cpu"), backend)
            return a, b, pool.data.clone()

        want = run()
        for layer in model.model.layers:  # as fuse() does on CUDA, where flashinfer RoPE runs
            layer.self_attn.rope_cache = cos_sin_table(cfg, "cpu")
        assert model.use_triton_kernels() == 2 * 4 + 1  # qkv, o, gate_up, down; lm_head
        assert isinstance(model.lm_head, GemvLinear)
        assert all(layer.mlp.act_in_down for layer in model.model.layers)
        got = run()
        for w, g in zip(want[:2], got[:2]):
            assert ((g.float() - w.float()).norm() / w.float().norm()).item() < 2e-2
            assert torch.equal(g.argmax(-1), w.argmax(-1))
        kv_w, kv_g = want[2].float(), got[2].float()
        assert ((kv_g - kv_w).norm() / kv_w.norm()).item() < 2e-2
        assert kv_g[:, 0].abs().sum() == 0 and kv_g[:, 5:].abs().sum() == 0  # other pages
        """
    )
