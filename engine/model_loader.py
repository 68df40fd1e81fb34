"""Load what `EngineConfig.model` names: a GGUF file, a Hugging Face directory, a preset (dummy
weights for benchmarks) or, by default, SmolLM2-135M-Instruct."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from pathlib import Path

import torch

from engine.default_model import default_model_path
from engine.gguf_loader import load_gguf, open_gguf
from engine.hub import looks_like_hub_id
from engine.llama import CausalLM
from engine.model_config import PRESETS
from engine.tokenizer import Tokenizer
from engine.weights import dummy_model, load_hf_directory
from engine.weights_digest import checkpoint_digest


def load_model(
    model: str | None, device: torch.device, dtype: torch.dtype, keep_q4: bool = False
) -> tuple[CausalLM, str, Tokenizer | None]:
    """(model, weights fingerprint, tokenizer or None); raises ValueError naming the model. The
    fingerprint covers the config, the tensors' names and shapes and the weight files' bytes
    (a preset's dummy weights: their seed and dtype).
    `keep_q4`: a GGUF's Q4_1 blocks are kept for a 4-bit CPU path (see `CausalLM.fuse`)."""
    if model is None:
        model = str(default_model_path())
    if model in PRESETS:
        m, fp = dummy_model(model, dtype=dtype, device=device)
        return m, fp, None
    path = Path(model)
    if path.is_file() and path.suffix == ".gguf":
        reader = open_gguf(path)  # parsed once for both the weights and the tokenizer
        m, fp, _ = load_gguf(reader, dtype=dtype, device=device, keep_q4=keep_q4)
        return m, with_contents(fp, [path]), Tokenizer.from_gguf(reader)
    if path.is_dir():
        m, fp = load_hf_directory(path, dtype=dtype, device=device)
        has_tokenizer = (path / "tokenizer.json").is_file()
        fp = with_contents(fp, path.glob("*.safetensors"))
        return m, fp, Tokenizer.from_hf_directory(path) if has_tokenizer else None
    raise ValueError(
        f"model {model!r} is not a GGUF file, a Hugging Face directory, a Hub id or a preset "
        f"({', '.join(PRESETS)})"
    )


def with_contents(fingerprint: str, files) -> str:
    """The config-and-shapes fingerprint bound to the weight files' bytes (their SHA-256s):
    two checkpoints that differ in one weight get different fingerprints."""
    digest = checkpoint_digest(files)
    return hashlib.blake2b(f"{fingerprint};weights={digest}".encode(), digest_size=16).hexdigest()


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), where bfloat16
    weights halve the bytes a memory-bound decode step reads at no extra compute."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(model: str | None, device: torch.device) -> torch.dtype:
    """`dtype=auto`: bfloat16 on CUDA. On a CPU, bfloat16 where the CPU computes it natively and
    the checkpoint is not float32 itself (a quantized GGUF, the default model included, or a
    bfloat16 / float16 Hugging Face checkpoint); float32 otherwise."""
    if device.type == "cuda":
        return torch.bfloat16
    if not cpu_has_native_bf16():
        return torch.float32
    if model is None or model.endswith(".gguf"):
        return torch.bfloat16
    config = Path(model) / "config.json"
    if config.is_file():
        saved = json.loads(config.read_text())
        stored = saved.get("torch_dtype") or saved.get("dtype") or "float32"  # newer: "dtype"
        return torch.bfloat16 if stored in ("bfloat16", "float16") else torch.float32
    return torch.float32  # a preset's dummy weights: the reference precision


def load_tokenizer(path: str, model_vocab: int) -> Tokenizer:
    """A tokenizer given apart from the model (`EngineConfig.tokenizer`); 'default' is the
    default model's. Its ids must all be valid for the model's vocabulary."""
    tok = Tokenizer.from_path(default_model_path() if path == "default" else path)
    if tok.vocab_size > model_vocab:
        raise ValueError(
            f"tokenizer {path!r} has {tok.vocab_size} tokens, more than the model's vocabulary "
            f"({model_vocab})"
        )
    return tok


def model_name(model: str | None) -> str:
    """The name a server reports: the default model's, a preset's, a Hub id as typed, or the
    file or folder name."""
    if model is None:
        return "SmolLM2-135M-Instruct"
    if looks_like_hub_id(model):
        return model
    path = Path(model)
    if path.suffix == ".gguf":
        return path.stem
    return path.name or model
