"""radixkv: a hierarchical radix KV cache for LLM serving (device, host and remote tiers).

The user-facing entry points live here (`Engine`, `serve`, `bench`, the `radixkv` script); the
cache itself is `radixkv.cache`. Importing radixkv loads the cache only; the serving engine is
imported on first use of `radixkv.Engine`.
"""

from radixkv import cache
from radixkv.cache import *  # noqa: F403 - the cache's public names are the package's

__version__ = "0.1.0"
ENTRY_POINTS = ("Engine", "GenerationResult", "Session", "StreamChunk")  # loaded on first use


def __getattr__(name: str):
    if name in ENTRY_POINTS:  # imported on first use: the cache alone stays light
        from radixkv import facade

        return getattr(facade, name)
    raise AttributeError(f"module 'radixkv' has no attribute {name!r}")


__all__ = [*cache.__all__, *ENTRY_POINTS]
