"""radixkv: a hierarchical radix KV cache for LLM serving (device, host and remote tiers).

Importing radixkv loads the cache only; the serving engine is imported on first use.
"""

from radixkv.config import CacheConfig
from radixkv.eviction import DEVICE, HOST, REMOTE
from radixkv.hicache import HiRadixCache, MatchResult
from radixkv.integrity import IntegrityError
from radixkv.namespace import CacheNamespace
from radixkv.policies import make_policy
from radixkv.prefetch import Prefetch

__version__ = "0.1.0"


def __getattr__(name: str):
    if name in (
        "Engine",
        "GenerationResult",
        "Session",
        "StreamChunk",
    ):  # imported on first use: the cache alone stays light
        from radixkv import facade

        return getattr(facade, name)
    raise AttributeError(f"module 'radixkv' has no attribute {name!r}")


__all__ = [
    "DEVICE",
    "Engine",
    "GenerationResult",
    "HOST",
    "REMOTE",
    "CacheConfig",
    "CacheNamespace",
    "HiRadixCache",
    "IntegrityError",
    "MatchResult",
    "Prefetch",
    "make_policy",
]
