"""The workload-aware default eviction policy (see docs/architecture.md for the measurements)."""

from __future__ import annotations

from radixkv.eviction import EvictionPolicy
from radixkv.tree import TreeNode


class WorkloadAwarePolicy(EvictionPolicy):
    """Placeholder until measured: LFU with dynamic aging."""

    name = "workload"

    def __init__(self) -> None:
        self.clock = 0.0

    def on_evict(self, priority: object) -> None:
        self.clock = max(self.clock, priority[0])  # type: ignore[index]

    def priority(self, node: TreeNode) -> object:
        return (self.clock + node.hits + 1, node.last_access)
