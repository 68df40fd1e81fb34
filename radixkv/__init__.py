"""radixkv: a hierarchical radix KV cache for LLM serving (device, host and remote tiers).

The user-facing entry points live here (`Engine`, `serve`, `bench`, the `radixkv` script); the
cache itself is `radixkv.cache`. Importing radixkv loads the cache only; the serving engine is
imported on first use of `radixkv.Engine`.
"""

from radixkv.cache import (
    DEVICE,
    HOST,
    REMOTE,
    CacheConfig,
    CacheNamespace,
    HiRadixCache,
    IntegrityError,
    MatchResult,
    Prefetch,
    make_policy,
)

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
