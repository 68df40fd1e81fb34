"""Loading a GGUF file (llama.cpp's format) into the torch model, dequantized.

GGUF stores Llama-family weights under llama.cpp names and with the rows of Q and K permuted
for its interleaved RoPE; both are undone here so the model uses the Hugging Face layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from engine.int4_linear import q4_1_blocks
from engine.llama import CausalLM
from engine.model_config import ModelConfig

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_ARCHS = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}


def _field(reader, key: str, default=None):
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def gguf_metadata(reader) -> dict:
    """Model metadata as a dict of plain values (token lists excluded)."""
    return {
        k: _field(reader, k)
        for k in reader.fields
        if not k.startswith("tokenizer.ggml.") or k.endswith("_id")
    }


def config_from_gguf(reader) -> ModelConfig:
    arch = _field(reader, "general.architecture")
    if arch not in _ARCHS:
        raise ValueError(f"unsupported GGUF architecture {arch!r} (supported: {', '.join(_ARCHS)})")

    def get(key, default=None):
        return _field(reader, f"{arch}.{key}", default)

    heads = int(get("attention.head_count"))
    hidden = int(get("embedding_length"))
    names = {t.name for t in reader.tensors}
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    vocab = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    return ModelConfig(
        arch=_ARCHS[arch],
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(get("feed_forward_length")),
        num_layers=int(get("block_count")),
        num_heads=heads,
        num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=int(get("attention.key_length", hidden // heads)),
        rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(get("rope.freq_base", 10000.0)),
        max_position_embeddings=int(get("context_length", 4096)),
        tie_word_embeddings="output.weight" not in names,
        attention_bias="blk.0.attn_q.bias" in names,
        qk_norm="blk.0.attn_q_norm.weight" in names,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=(int(eos),) if eos is not None else (),
    )


def _unpermute(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation: per head, rows (pairs interleaved) -> (halves)."""
    rest = w.shape[1:]
    return w.reshape(heads, w.shape[0] // heads // 2, 2, *rest).transpose(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.{parts[3]}"
    return None


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` on the file (parse it once; the loader and tokenizer both take it)."""
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such GGUF file")
    return GGUFReader(str(path))


def load_gguf(
    source,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    keep_q4: bool = False,
) -> tuple[CausalLM, str, dict]:
    """(model, fingerprint, metadata) from a GGUF file's path or an open reader (`open_gguf`);
    quantized tensors are dequantized. With `keep_q4`, the raw blocks of Q4_1 weights are kept
    too, as `model.q4_blocks` ({name: (q, d, m)}), for `CausalLM.fuse` to run them in 4 bits."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    reader = source if isinstance(source, GGUFReader) else open_gguf(source)
    config = config_from_gguf(reader)
    with torch.device("meta"):
        model = CausalLM(config)
    state, meta, q4 = {}, {}, {}
    for t in reader.tensors:
        name = _hf_name(t.name)
        if name is None:
            continue  # e.g. rope_freqs: recomputed from the config
        w = torch.from_numpy(np.array(dequantize(t.data, t.tensor_type), dtype=np.float32))
        if keep_q4 and t.tensor_type.name == "Q4_1" and name.startswith("model.layers."):
            q4[name] = q4_1_blocks(t.data, *w.shape)
        if config.arch in ("llama", "mistral") and name.endswith(
            ("q_proj.weight", "k_proj.weight")
        ):
            heads = config.num_heads if "q_proj" in name else config.num_kv_heads
            w = _unpermute(w, heads)
            if name in q4:  # the same row order for the blocks
                q4[name] = tuple(_unpermute(x, heads) for x in q4[name])
        state[name] = w.to(dtype)
        meta[name] = (tuple(w.shape), t.tensor_type.name)
    if config.tie_word_embeddings:
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model = model.to(device).eval()
    model.q4_blocks = q4
    return model, config.fingerprint(meta), gguf_metadata(reader)
