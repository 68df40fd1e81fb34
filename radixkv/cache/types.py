"""What the cache answers and counts: a match by tier, and the cache's counters."""

from __future__ import annotations

from dataclasses import dataclass, field

from radixkv.cache.tree import TreeNode


@dataclass
class MatchResult:
    """The cached prefix of a token sequence, tier by tier (token counts, page-aligned).

    tokens [0, device_tokens) are on device (`device_pages`); the next `host_tokens` on host;
    the next `remote_tokens` on host or remote (a prefetch brings them to host).
    """

    device_pages: list[int]
    device_tokens: int
    host_tokens: int
    remote_tokens: int
    last_device_node: TreeNode
    last_node: TreeNode

    @property
    def cached_tokens(self) -> int:
        return self.device_tokens + self.host_tokens + self.remote_tokens


@dataclass
class CacheCounters:
    matches: int = 0
    tokens_queried: int = 0
    tokens_hit: list[int] = field(default_factory=lambda: [0, 0, 0])  # by tier
    evicted_pages: list[int] = field(default_factory=lambda: [0, 0, 0])  # by tier
    inserted_pages: int = 0
    duplicate_pages: int = 0
    remote_write_failures: int = 0
    remote_writes_shed: int = 0  # pages not written to remote: the write backlog was full
    remote_read_misses: int = 0
