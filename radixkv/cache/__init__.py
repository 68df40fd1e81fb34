"""The hierarchical radix cache: the tree over token prefixes, the residency of its pages on the
device, host and remote tiers, and the policies that move them.

    hicache.py      HiRadixCache: the control plane, the one owner of every page
    prefix_cache.py PrefixCache: the typed handle API the serving engine uses
    data_plane.py   the bytes: device <-> host copies, remote I/O on its own thread
    tree.py         the radix tree's structure; tiers.py: tier indices
    eviction/       which pages each tier gives up first (index, policies, evictor)
    prefetch/       remote reads into host, ahead-of-need promotion, shared hot prefixes
    writes.py, remote_admission.py, promotion.py   copies down the tiers, and a host hit up

It imports `storage`, never `engine`.
"""

from radixkv.cache.config import CacheConfig
from radixkv.cache.eviction.by_name import make_policy
from radixkv.cache.hicache import HiRadixCache
from radixkv.cache.integrity import IntegrityError
from radixkv.cache.namespace import CacheNamespace
from radixkv.cache.prefetch.remote_reads import Prefetch
from radixkv.cache.tiers import DEVICE, HOST, REMOTE
from radixkv.cache.types import MatchResult

__all__ = [
    "DEVICE",
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
