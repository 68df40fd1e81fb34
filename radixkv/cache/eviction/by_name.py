"""Eviction policies by name: the classic ones (`radixkv.cache.eviction`), the adaptive default
(`radixkv.cache.eviction.adaptive`) and the workload-aware LRU (`radixkv.cache.eviction.workload`)."""

from __future__ import annotations

from radixkv.cache.eviction.adaptive import AdaptivePolicy
from radixkv.cache.eviction.policy import POLICIES, EvictionPolicy
from radixkv.cache.eviction.workload import WorkloadAwarePolicy


def make_policy(name: str) -> EvictionPolicy:
    """A policy by name: lru, lfu, slru, workload, or adaptive (the default)."""
    factories = {
        **POLICIES,
        WorkloadAwarePolicy.name: WorkloadAwarePolicy,
        AdaptivePolicy.name: AdaptivePolicy,
    }
    if name not in factories:
        raise ValueError(
            f"unknown eviction policy {name!r} (choose from {', '.join(sorted(factories))})"
        )
    return factories[name]()
