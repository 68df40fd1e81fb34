"""Attention backends over the paged device pool."""

from engine.attention.torch_backend import TorchPagedAttention

__all__ = ["TorchPagedAttention"]
