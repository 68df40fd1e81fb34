"""Rotary position embeddings (the non-interleaved "rotate half" form), with Llama-3 scaling."""

from __future__ import annotations

import math

import torch

from engine.model_config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> torch.Tensor:
    """[head_dim / 2] float32 inverse frequencies, scaled per Llama 3 when configured."""
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    s = config.rope_scaling
    if s is None:
        return inv
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)  # low frequencies: divided
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)  # in between: interpolated
    return torch.where(medium, smoothed, scaled)


class Rotary:
    def __init__(self, config: ModelConfig, device: torch.device) -> None:
        self.inv_freq = inverse_frequencies(config).to(device)

    def frequencies(self, positions: torch.Tensor) -> torch.Tensor:
        """[tokens, head_dim / 2] float32 angles."""
        return positions.float()[:, None] * self.inv_freq[None, :]

    def cos_sin(
        self, positions: torch.Tensor, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin, [tokens, head_dim], computed in float32 then cast."""
        freqs = self.frequencies(positions)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def cos_sin_table(config: ModelConfig, device: torch.device) -> torch.Tensor:
    """[max positions, head_dim] float32: cos of each position's angles, then their sin (the
    table flashinfer's RoPE kernel indexes by position)."""
    rotary = Rotary(config, device)
    freqs = rotary.frequencies(torch.arange(config.max_position_embeddings, device=device))
    return torch.cat((freqs.cos(), freqs.sin()), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [tokens, heads, head_dim]; cos, sin: [tokens, head_dim]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]
