"""Loading weights: a Hugging Face directory (config.json + safetensors), or dummy weights for a
preset (benchmarks). The model fingerprint binds the cache namespace to the weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from engine.llama import CausalLM
from engine.model_config import PRESETS, ModelConfig


def load_hf_directory(
    path: str | Path, *, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> tuple[CausalLM, str]:
    """(model, fingerprint) from a directory holding config.json and *.safetensors."""
    from safetensors import safe_open

    path = Path(path)
    if not (path / "config.json").is_file():
        raise ValueError(f"{path}: no config.json (expected a Hugging Face model directory)")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{path}: no .safetensors weights")
    config = ModelConfig.from_hf(json.loads((path / "config.json").read_text()))
    with torch.device("meta"):
        model = CausalLM(config)
    expected = {n for n, _ in model.named_parameters()}  # tied lm_head appears once
    state: dict[str, torch.Tensor] = {}
    meta: dict[str, tuple] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                if name == "lm_head.weight" and config.tie_word_embeddings:
                    continue
                if name not in expected:
                    raise ValueError(f"{f.name}: unexpected tensor {name!r} for {config.arch}")
                t = st.get_tensor(name)
                meta[name] = (tuple(t.shape), str(t.dtype))
                state[name] = t.to(dtype)
    missing = expected - state.keys()
    if missing:
        raise ValueError(
            f"{path}: missing weights {sorted(missing)[:5]}{' ...' if len(missing) > 5 else ''}"
        )
    if config.tie_word_embeddings:  # state_dict() names the shared tensor twice
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device).eval(), config.fingerprint(meta)


def dummy_model(
    preset: str, *, dtype: torch.dtype, device: str | torch.device, seed: int = 0
) -> tuple[CausalLM, str]:
    """A preset's shapes with small random weights (for benchmarks: speed, not text)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    config = PRESETS[preset]
    torch.manual_seed(seed)
    with torch.device(device):
        model = CausalLM(config).to(dtype)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return model.eval(), config.fingerprint({"dummy-seed": ((seed,), str(dtype))})
