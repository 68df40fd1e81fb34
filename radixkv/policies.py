"""Eviction policies by name: the classic ones (`radixkv.eviction`), the adaptive default
(`radixkv.adaptive_policy`) and the workload-aware LRU (`radixkv.workload_policy`)."""

from __future__ import annotations

from radixkv.adaptive_policy import AdaptivePolicy
from radixkv.eviction import POLICIES, EvictionPolicy
from radixkv.workload_policy import WorkloadAwarePolicy


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
