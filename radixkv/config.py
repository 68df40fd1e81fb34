"""Cache configuration: a frozen, validated dataclass."""

from __future__ import annotations

from dataclasses import dataclass

from radixkv.policies import make_policy
from radixkv.prefetcher import PrefetchConfig

WRITE_POLICIES = ("write_through", "write_through_selective", "write_back")
REMOTE_IO_MODES = ("thread", "inline")


@dataclass(frozen=True)
class CacheConfig:
    """Capacities are in pages of the layout's `page_size`; 0 disables the host or remote tier.

    - `policy`: eviction priority, one of lru, lfu, slru, workload, adaptive (default).
    - `write_policy`: write_through copies every new page down a tier at once;
      write_through_selective only once a node has been hit `selective_threshold` times;
      write_back copies on demotion. Device -> host and host -> remote follow the same rule.
    - `remote_timeout_s`: a remote call taking longer fails (a miss; the breaker counts it).
    - `remote_load_margin`: a remote read goes ahead only if its estimated time times this margin
      is below the estimated recompute time (`radixkv.cost_model`); 0 always loads.
    - `remote_pages`: how many remote pages the tree keeps track of (the store's own cap bounds
      what it actually holds); needs a store.
    - `remote_io`: `thread` (default) runs remote calls on a background I/O thread; `inline`
      runs each one on the owner's thread, in submission order, only when the owner waits
      (`wait_one` / `wait_idle`): deterministic, for property tests and simulated replays.
    - `remote_admission`: 0 (default) writes every page the write policy copies down on to the
      remote tier; a share in (0, 1] writes a page there only if nodes of its class are read
      again at least that often (`radixkv.remote_admission`), or once it has been read again.
    - `prefetch`: the limits of promotion ahead of need (`radixkv.prefetcher`); it acts only
      when its owner calls `HiRadixCache.prefetcher.step`.
    - `remote_write_backlog_pages`: pages written to the remote tier and not yet acknowledged,
      at most (None: an eighth of the host tier, 64 at least). A write that would go past it, or
      that comes with 4 puts in flight already or while the oldest has waited a quarter of
      `remote_timeout_s` (threaded I/O), is shed (counted; the pages stay on host and may be
      written when they leave it): a store slower than the pages computed must not pin the
      host tier, hold their bytes in memory, or time out queued calls until the breaker
      refuses its reads too.
    """

    device_pages: int
    host_pages: int = 0
    remote_pages: int = 0
    policy: str = "adaptive"
    write_policy: str = "write_through"
    selective_threshold: int = 2
    remote_timeout_s: float = 10.0
    remote_load_margin: float = 1.0
    remote_io: str = "thread"
    prefetch: PrefetchConfig = PrefetchConfig()
    remote_admission: float = 0.0
    remote_write_backlog_pages: int | None = None

    def __post_init__(self) -> None:
        for name in ("device_pages", "host_pages", "remote_pages"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"CacheConfig.{name} must be an integer >= 0, got {v!r}")
        if self.device_pages == 0:
            raise ValueError("CacheConfig.device_pages must be > 0: requests run from device pages")
        if self.write_policy not in WRITE_POLICIES:
            raise ValueError(
                f"CacheConfig.write_policy must be one of {', '.join(WRITE_POLICIES)}, got {self.write_policy!r}"
            )
        if not isinstance(self.selective_threshold, int) or self.selective_threshold < 1:
            raise ValueError(
                f"CacheConfig.selective_threshold must be an integer >= 1, got {self.selective_threshold!r}"
            )
        if not self.remote_timeout_s > 0:
            raise ValueError(
                f"CacheConfig.remote_timeout_s must be > 0, got {self.remote_timeout_s!r}"
            )
        if not isinstance(self.remote_load_margin, (int, float)) or not (
            0 <= self.remote_load_margin < float("inf")
        ):
            raise ValueError(
                f"CacheConfig.remote_load_margin must be a finite number >= 0, got {self.remote_load_margin!r}"
            )
        if self.remote_io not in REMOTE_IO_MODES:
            raise ValueError(
                f"CacheConfig.remote_io must be one of {', '.join(REMOTE_IO_MODES)}, got {self.remote_io!r}"
            )
        if not isinstance(self.remote_admission, (int, float)) or not (
            0 <= self.remote_admission <= 1
        ):
            raise ValueError(
                f"CacheConfig.remote_admission must be a number in [0, 1], got {self.remote_admission!r}"
            )
        b = self.remote_write_backlog_pages
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ValueError(
                f"CacheConfig.remote_write_backlog_pages must be None or an integer >= 1, got {b!r}"
            )
        if not isinstance(self.prefetch, PrefetchConfig):
            raise ValueError("CacheConfig.prefetch must be a PrefetchConfig")
        make_policy(self.policy)  # raises ValueError naming the choices

    @property
    def write_backlog_pages(self) -> int:
        """The remote write backlog's bound in pages (see `remote_write_backlog_pages`)."""
        b = self.remote_write_backlog_pages
        return b if b is not None else max(64, self.host_pages // 8)
