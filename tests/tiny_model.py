"""A tiny random Llama saved as a Hugging Face directory: the model for engine-level tests."""

from __future__ import annotations

from pathlib import Path

import torch

PAGE_BYTES = 2 * 2 * 16 * 2 * 16 * 4  # layers x K/V x page 16 x kv heads x head dim x fp32


def save_tiny_llama(path: Path, max_positions: int = 512):
    """Writes the model to `path`; returns the transformers model (the reference)."""
    import transformers

    torch.manual_seed(3)
    cfg = transformers.LlamaConfig(
        vocab_size=101,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        initializer_range=0.15,
        max_position_embeddings=max_positions,
    )
    hf = transformers.LlamaForCausalLM(cfg).float().eval()
    hf.save_pretrained(path)
    return hf


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
