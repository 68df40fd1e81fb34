"""The Llama-family decoder in torch: RMSNorm, RoPE, grouped-query attention over a paged KV
pool, SwiGLU MLP, tied or untied embeddings; Qwen2's QKV bias and Qwen3's per-head QK norm.

Module names follow Hugging Face's (model.layers.N.self_attn.q_proj, ...), so a checkpoint's
state dict loads as is.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from engine.attention.kv_write import store_kv
from engine.cpu_linear import copy_budget_bytes, use_onednn
from engine.forward_batch import ForwardBatch
from engine.int4_linear import Int4Linear, keep_dense_copies
from engine.model_config import ModelConfig
from engine.rope import Rotary, apply_rotary, cos_sin_table


def _flashinfer(module: str):
    """A flashinfer kernel module (`norm`, `rope`), or None without flashinfer (the torch path)."""
    try:
        return importlib.import_module(f"flashinfer.{module}")
    except ImportError:
        return None


def _concat_linear(*parts: nn.Linear) -> nn.Linear:
    """One Linear computing `parts` side by side (their weights concatenated once, at load)."""
    first = parts[0]
    fused = nn.Linear(
        first.in_features,
        sum(p.out_features for p in parts),
        bias=first.bias is not None,
        device=first.weight.device,
        dtype=first.weight.dtype,
    )
    with torch.no_grad():
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))
    return fused


_FI_NORM, _FI_ROPE, _FI_ACT = _flashinfer("norm"), _flashinfer("rope"), _flashinfer("activation")
FUSED_ROPE_KV_TOKENS = 64  # the fused RoPE + KV write runs batches this small (measured there)


class RMSNorm(nn.Module):
    """RMSNorm; on CUDA with flashinfer its kernels (one launch, and the residual add fused in
    `add_forward`); the torch code is the reference everywhere else."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.fused = False  # set by CausalLM.fuse() on CUDA when flashinfer is there

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused and x.dim() == 2:
            return _FI_NORM.rmsnorm(x.contiguous(), self.weight, self.eps)
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def add_forward(
        self, x: torch.Tensor, residual: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(norm(x + residual), x + residual)."""
        if self.fused:
            _FI_NORM.fused_add_rmsnorm(x, residual, self.weight, self.eps)  # in place: both
            return x, residual
        residual = x + residual
        return self.forward(residual), residual


class Attention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = (
            config.num_heads,
            config.num_kv_heads,
            config.head_dim,
        )
        bias = config.attention_bias
        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=False)
        self.rope_cache: torch.Tensor | None = None  # set by CausalLM.fuse() for flashinfer RoPE
        # set by CausalLM.use_triton_kernels(): RoPE and the KV write in one kernel (few tokens)
        self.rope_store_kv = None
        if config.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    def fuse(self, q4: dict | None = None) -> None:
        """Merge q, k and v projections into one matmul; with `q4` (each projection's Q4_1
        blocks, CPU) they run as 4-bit weights, o_proj too."""
        if q4 and all(n in q4 for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            self.qkv_proj = Int4Linear.concat([q4["q_proj"], q4["k_proj"], q4["v_proj"]])
            self.o_proj = Int4Linear(*q4["o_proj"])
        else:
            self.qkv_proj = _concat_linear(self.q_proj, self.k_proj, self.v_proj)
        del self.q_proj, self.k_proj, self.v_proj

    def forward(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, batch: ForwardBatch, backend
    ) -> torch.Tensor:
        """Project, rotate, store this layer's new K and V at the batch's output slots, then
        attend (the backend reads K and V from the pool)."""
        t = x.shape[0]
        kv = backend.pool.layer(self.layer)
        fused = self.rope_store_kv is not None and t <= FUSED_ROPE_KV_TOKENS
        if hasattr(self, "qkv_proj"):
            qkv = self.qkv_proj(x)
            q, k, v = qkv.split(
                [self.num_heads * self.head_dim, *(2 * [self.num_kv_heads * self.head_dim])], -1
            )
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if fused:  # one Triton kernel: q and k rotated in place, k and v stored
            self.rope_store_kv(
                qkv, batch.positions, self.rope_cache, kv, batch.out_pages, batch.out_offsets,
                self.num_heads, self.num_kv_heads, self.head_dim,
            )  # fmt: skip
        elif self.rope_cache is not None:
            # flashinfer rotates q and k in place in one kernel (positions index the cache); it
            # takes them strided, so k stays beside v in the QKV output and one write stores both
            _FI_ROPE.apply_rope_with_cos_sin_cache_inplace(
                batch.positions, q, k, self.head_dim, self.rope_cache, is_neox=True
            )
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        if self.rope_cache is None:
            if hasattr(self, "q_norm"):
                q, k = self.q_norm(q), self.k_norm(k)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if not fused:
            store_kv(kv, batch.out_pages, batch.out_offsets, k, v)
        return self.o_proj(backend.forward(self.layer, q, batch))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.fused_act = False  # set by CausalLM.fuse() on CUDA when flashinfer is there
        # set by CausalLM.use_triton_kernels(): one row's activation computed in the down
        # projection's GEMV as it loads gate/up (no kernel of its own)
        self.act_in_down = False

    def fuse(self, q4: dict | None = None) -> None:
        """Merge the gate and up projections into one matmul; with `q4` (Q4_1 blocks, CPU) all
        three run as 4-bit weights."""
        if q4 and all(n in q4 for n in ("gate_proj", "up_proj", "down_proj")):
            self.gate_up_proj = Int4Linear.concat([q4["gate_proj"], q4["up_proj"]])
            self.down_proj = Int4Linear(*q4["down_proj"])
        else:
            self.gate_up_proj = _concat_linear(self.gate_proj, self.up_proj)
        del self.gate_proj, self.up_proj

    def _silu_and_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """[T, 2I] -> silu(gate) * up [T, I]."""
        if self.fused_act:  # flashinfer: one kernel
            return _FI_ACT.silu_and_mul(gate_up)
        gate, up = gate_up.chunk(2, -1)
        return F.silu(gate) * up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "gate_up_proj"):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate_up = self.gate_up_proj(x)
        if self.act_in_down:
            return self.down_proj.silu_mul_forward(gate_up, self._silu_and_mul)
        return self.down_proj(self._silu_and_mul(gate_up))


class DecoderLayer(nn.Module):
    def __init__(self, config: ModelConfig, layer: int) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = MLP(config)

    def forward(self, x, residual, cos, sin, batch, backend):
        """(output, residual): the residual stream is carried apart so that each norm can fuse
        the add before it; the layer's result is output + residual."""
        if residual is None:
            residual, h = x, self.input_layernorm(x)
        else:
            h, residual = self.input_layernorm.add_forward(x, residual)
        h = self.self_attn(h, cos, sin, batch, backend)
        h, residual = self.post_attention_layernorm.add_forward(h, residual)
        return self.mlp(h), residual


class Backbone(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class CausalLM(nn.Module):
    """forward(batch, backend) -> logits of each sequence's last new token (or of every token)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self._rotary: Rotary | None = None

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch, backend, *, all_logits: bool = False) -> torch.Tensor:
        if self._rotary is None or self._rotary.inv_freq.device != batch.positions.device:
            self._rotary = Rotary(self.config, batch.positions.device)
        x = self.model.embed_tokens(batch.input_ids)
        cos = sin = None  # the torch RoPE's tables; flashinfer's RoPE indexes its own cache
        if self.model.layers[0].self_attn.rope_cache is None:
            cos, sin = self._rotary.cos_sin(batch.positions, x.dtype)
        residual = None
        for i, layer in enumerate(self.model.layers):
            if batch.layer_ready is not None:  # layer i waits only for layer i's loaded pages
                torch.cuda.current_stream(x.device).wait_event(batch.layer_ready[i])
            x, residual = layer(x, residual, cos, sin, batch, backend)
        if not all_logits:
            last = batch.last_token_indices()
            x, residual = x[last], residual[last]
        x, _ = self.model.norm.add_forward(x, residual)
        return self.lm_head(x).float()

    def fuse(self, int4: bool = False) -> CausalLM:
        """Fewer, bigger kernels for serving: merged QKV and gate/up projections, and on CUDA
        with flashinfer its RMSNorm kernels with the residual add fused; on a CPU in float32 the
        dense products in oneDNN. With `int4` (CPU), a GGUF's Q4_1 projections kept by the
        loader (`q4_blocks`) run in 4 bits.
        Changes the module names (state dicts no longer match Hugging Face's), so it runs after
        loading."""
        # "model.layers.{i}.{part}.{proj}.weight" -> (i, part) -> {proj: blocks}
        q4: dict[tuple[int, str], dict] = {}
        for name, blocks in (getattr(self, "q4_blocks", None) or {}).items():
            _, _, i, part, proj, _ = name.split(".")
            q4.setdefault((int(i), part), {})[proj] = blocks
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.fuse(q4.get((i, "self_attn")) if int4 else None)
            layer.mlp.fuse(q4.get((i, "mlp")) if int4 else None)
        self.q4_blocks = {}
        weight = self.lm_head.weight
        budget = copy_budget_bytes() if weight.device.type == "cpu" else 0
        if int4:  # a prefill's many rows multiply densely (engine/int4_linear.py)
            budget -= keep_dense_copies(self, weight.dtype, budget)
        # float32 on a CPU: the dense products through oneDNN, by packed weights within budget
        use_onednn(self, pack_budget_bytes=budget)
        # flashinfer's kernels take half-precision activations (and RoPE these head sizes)
        kernels = weight.is_cuda and weight.dtype in (torch.bfloat16, torch.float16)
        for module in self.modules():
            if isinstance(module, RMSNorm):
                module.fused = kernels and _FI_NORM is not None
            elif isinstance(module, MLP):
                module.fused_act = (
                    kernels and _FI_ACT is not None and hasattr(module, "gate_up_proj")
                )
        cfg = self.config  # (QK norm runs between projection and RoPE: it keeps the torch path)
        if kernels and _FI_ROPE is not None and cfg.head_dim in (64, 128, 256) and not cfg.qk_norm:
            cache = cos_sin_table(cfg, weight.device)
            for layer in self.model.layers:
                layer.self_attn.rope_cache = cache
        return self

    def use_triton_kernels(self) -> int:
        """After `fuse()`, on CUDA (or in Triton's CPU interpreter, for tests): batch-1 projections
        by the Triton GEMV (`GemvLinear`), the down projection's computing the SwiGLU activation
        in its loads, and, where the RoPE table is set (flashinfer's RoPE on CUDA), RoPE fused
        with the KV write (`rope_store_kv`). Each GEMV shape is autotuned now,
        before any CUDA graph is captured. Returns the projections replaced."""
        from engine.attention.fused_rope_kv import rope_store_kv
        from engine.gemv_triton import GemvLinear

        replaced: list[GemvLinear] = []

        def swap(owner: nn.Module, name: str) -> None:
            linear = getattr(owner, name)
            if type(linear) is nn.Linear and linear.bias is None:
                setattr(owner, name, GemvLinear(linear))
                replaced.append(getattr(owner, name))

        for layer in self.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for owner, name in ((attn, "qkv_proj"), (attn, "o_proj"), (mlp, "gate_up_proj")):
                if hasattr(owner, name):
                    swap(owner, name)
            swap(mlp, "down_proj")
            mlp.act_in_down = hasattr(mlp, "gate_up_proj") and isinstance(mlp.down_proj, GemvLinear)
            if attn.rope_cache is not None and hasattr(attn, "qkv_proj"):
                attn.rope_store_kv = rope_store_kv
        swap(self, "lm_head")
        for module in {tuple(m.weight.shape): m for m in replaced}.values():
            module.tune()
        fused_down = [layer.mlp.down_proj for layer in self.model.layers if layer.mlp.act_in_down]
        for down in {tuple(d.weight.shape): d for d in fused_down}.values():
            down.tune(silu_mul=True)
        return len(replaced)
