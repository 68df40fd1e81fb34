"""Whether the Triton decode kernels run: `EngineConfig.triton_kernels` (auto / on / off)
resolved against the device, the dtype and whether the kernels load at all."""

from __future__ import annotations

import importlib
import importlib.util
import logging

import torch

log = logging.getLogger(__name__)


def _triton_kernels_unavailable() -> str | None:
    """Why the Triton kernels cannot be loaded here; None when they can."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (pip install triton)"
    try:
        importlib.import_module("engine.gemv_triton")
        importlib.import_module("engine.attention.fused_rope_kv")
    except Exception as err:  # a Triton build that does not match this torch, say
        return f"importing them failed ({type(err).__name__}: {err})"
    return None


def triton_kernels_wanted(setting: str, device: torch.device, dtype: torch.dtype) -> bool:
    """`EngineConfig.triton_kernels` resolved: auto is on CUDA in bf16/fp16 where the kernels
    load (else off, with a warning saying why); `on` where they cannot run is a clear error."""
    if setting == "off":
        return False
    if setting == "on" and device.type != "cuda":
        raise ValueError("triton_kernels needs a CUDA device")
    if setting == "auto" and (
        device.type != "cuda" or dtype not in (torch.bfloat16, torch.float16)
    ):
        return False
    why = _triton_kernels_unavailable()
    if why is None:
        return True
    if setting == "on":
        raise ValueError(f"triton_kernels=on, but {why}")
    log.warning("the Triton decode kernels are off: %s", why)
    return False
