"""A minimal greedy runner over the paged pool for model tests (the scheduler is the real one)."""

from __future__ import annotations

import torch

from engine.attention import TorchPagedAttention
from engine.forward_batch import ForwardBatch
from storage import DevicePool, KVLayout, PageAllocator

PS = 4


class Paged:
    """Just enough of a runner: a device pool, an allocator and page tables per sequence."""

    def __init__(self, model, pages: int = 64) -> None:
        c = model.config
        self.pool = DevicePool(
            KVLayout(c.num_layers, c.num_kv_heads, c.head_dim, PS, torch.float32),
            pages,
            device="cpu",
        )
        self.alloc = PageAllocator(pages)
        self.backend = TorchPagedAttention(self.pool, c.num_heads, c.num_kv_heads, c.head_dim)
        self.model = model

    def step(self, seqs):
        """seqs: list of (new tokens, prefix_len, page_table); grows tables as needed."""
        for new, prefix, table in seqs:
            need = -(-(prefix + len(new)) // PS) - len(table)
            table += self.alloc.alloc(max(0, need))
        return self.model(ForwardBatch.build(seqs, PS), self.backend)

    def greedy(self, prompt, n, *, chunk=None, table=None, cached=0):
        table = [] if table is None else table
        pos, out = cached, []
        while pos < len(prompt):  # (chunked) prefill of the uncached part
            end = len(prompt) if chunk is None else min(len(prompt), pos + chunk)
            logits = self.step([(prompt[pos:end], pos, table)])
            pos = end
        for _ in range(n):
            tok = int(logits[0].argmax())
            out.append(tok)
            logits = self.step([([tok], pos, table)])
            pos += 1
        return out, table


def hf_greedy(hf, prompt, n):
    """HF's greedy tokens for exactly n steps (EOS does not stop it: stopping is the scheduler's)."""
    hf.generation_config.eos_token_id = None
    ids = torch.tensor([prompt])
    out = hf.generate(
        ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0
    )
    return out[0, len(prompt) :].tolist()


def small_cuda_llama():
    """(model, pool, torch reference backend): a 2-layer bf16 Llama with flashinfer-sized heads
    (8 x 64, 2 KV heads) over a 64-page device pool, for GPU tests."""
    from engine.llama import CausalLM
    from engine.model_config import ModelConfig

    torch.manual_seed(0)
    cfg = ModelConfig(
        arch="llama",
        vocab_size=256,
        hidden_size=256,
        intermediate_size=512,
        num_layers=2,
        num_heads=8,
        num_kv_heads=2,
        head_dim=64,
    )
    model = CausalLM(cfg).to("cuda", torch.bfloat16).eval()
    pool = DevicePool(KVLayout(2, 2, 64, 16, torch.bfloat16), 64, "cuda")
    return model, pool, TorchPagedAttention(pool, 8, 2, 64)
