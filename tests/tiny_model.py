"""A tiny random Llama saved as a Hugging Face directory: the model for engine-level tests."""

from __future__ import annotations

from pathlib import Path

import torch

PAGE_BYTES = 2 * 2 * 16 * 2 * 16 * 4  # layers x K/V x page 16 x kv heads x head dim x fp32
# the GPU tests' random Llama (`save_llama`'s config, less layers and context): flashinfer-sized
# heads (8 x 64, 2 KV heads), small weights
GPU_LLAMA = dict(
    vocab_size=512,
    hidden_size=512,
    intermediate_size=1024,
    num_attention_heads=8,
    num_key_value_heads=2,
    initializer_range=0.05,
)


def save_llama(path: Path, seed: int, **config):
    """A random float32 Llama of `config` (transformers.LlamaConfig's fields), its weights drawn
    after `torch.manual_seed(seed)`, written to `path`; returns the transformers model."""
    import transformers

    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**config)).float().eval()
    hf.save_pretrained(path)
    return hf


def save_tiny_llama(path: Path, max_positions: int = 512):
    """Writes the model to `path`; returns the transformers model (the reference)."""
    return save_llama(
        path,
        3,
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.15,
        max_position_embeddings=max_positions,
    )


def gb(pages: int) -> float:
    """A memory size in GB holding `pages` pages of the tiny model."""
    return pages * PAGE_BYTES / 2**30


def save_tiny_llama_for_the_default_tokenizer(path: Path) -> Path:
    """A one-layer random Llama with the default model's vocabulary, to serve with
    `tokenizer="default"` (its chat template too): for tests of the API, not of the answers."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=49_152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
    )
    transformers.LlamaForCausalLM(cfg).save_pretrained(path)
    return path
