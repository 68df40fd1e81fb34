"""Cache configuration: a frozen, validated dataclass."""

from __future__ import annotations

import math
from dataclasses import dataclass

from radixkv.cache.eviction.by_name import make_policy

WRITE_POLICIES = ("write_through", "write_through_selective", "write_back")
REMOTE_IO_MODES = ("thread", "inline")


@dataclass(frozen=True)
class PrefetchConfig:
    """How far the prefetcher may go. Times are in the caller's clock (seconds)."""

    device_share: float = 0.25  # of the device tier, at most, held by prefetches
    confidence: float = 0.9  # a session class must have returned this often to be prefetched
    lead_quantile: float = 0.05  # promote a session at this quantile of the learned gaps
    lead_s: float = 0.2  # less this (a copy plus a long step): else clients that always wait
    # the same time would come back as their context starts to move
    expire_quantile: float = 0.95  # give up on a session after twice this quantile
    history: int = 1024  # gaps between turns remembered
    min_history: int = 16  # gaps seen before sessions are predicted
    session_ttl_s: float = 600.0  # a session's window before any gap has been learned
    max_sessions: int = 65_536  # sessions whose turn counts are remembered

    def __post_init__(self) -> None:
        for name in ("device_share", "confidence"):
            v = getattr(self, name)
            if not (0 <= v <= 1):
                raise ValueError(f"PrefetchConfig.{name} must be within [0, 1], got {v!r}")
        if not (0 <= self.lead_quantile < self.expire_quantile <= 1):
            raise ValueError("PrefetchConfig needs 0 <= lead_quantile < expire_quantile <= 1")
        for name in ("history", "min_history", "max_sessions"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"PrefetchConfig.{name} must be an integer >= 1")
        if not (self.lead_s >= 0 and math.isfinite(self.lead_s)):
            raise ValueError("PrefetchConfig.lead_s must be a finite number >= 0")
        if not (self.session_ttl_s > 0 and math.isfinite(self.session_ttl_s)):
            raise ValueError("PrefetchConfig.session_ttl_s must be a positive number")


@dataclass(frozen=True)
class CacheConfig:
    """Capacities are in pages of the layout's `page_size`; 0 disables the host or remote tier.

    - `policy`: eviction priority, one of lru, lfu, slru, workload, adaptive (default).
    - `write_policy`: write_through copies every new page down a tier at once;
      write_through_selective only once a node has been hit `selective_threshold` times;
      write_back copies on demotion. Device -> host and host -> remote follow the same rule.
    - `remote_timeout_s`: a remote call taking longer fails (a miss; the breaker counts it).
    - `remote_load_margin`: a remote read goes ahead only if its estimated time times this margin
      is below the estimated recompute time (`radixkv.cache.cost_model`); 0 always loads.
    - `remote_pages`: how many remote pages the tree keeps track of (the store's own cap bounds
      what it actually holds); needs a store.
    - `remote_io`: `thread` (default) runs remote calls on a background I/O thread; `inline`
      runs each one on the owner's thread, in submission order, only when the owner waits
      (`wait_one` / `wait_idle`): deterministic, for property tests and simulated replays.
    - `remote_admission`: 0 (default) writes every page the write policy copies down on to the
      remote tier; a share in (0, 1] writes a page there only if nodes of its class are read
      again at least that often (`radixkv.cache.remote_admission`), or once it has been read again.
    - `prefetch`: the limits of promotion ahead of need (`radixkv.cache.prefetch.prefetcher`); it acts only
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
        check_engine_settings("CacheConfig", {n: getattr(self, n) for n in ENGINE_SETTINGS})
        if not isinstance(self.selective_threshold, int) or self.selective_threshold < 1:
            raise ValueError(
                f"CacheConfig.selective_threshold must be an integer >= 1, got {self.selective_threshold!r}"
            )
        if self.remote_io not in REMOTE_IO_MODES:
            raise ValueError(
                f"CacheConfig.remote_io must be one of {', '.join(REMOTE_IO_MODES)}, got {self.remote_io!r}"
            )
        b = self.remote_write_backlog_pages
        if b is not None and (not isinstance(b, int) or isinstance(b, bool) or b < 1):
            raise ValueError(
                f"CacheConfig.remote_write_backlog_pages must be None or an integer >= 1, got {b!r}"
            )
        if not isinstance(self.prefetch, PrefetchConfig):
            raise ValueError("CacheConfig.prefetch must be a PrefetchConfig")

    @property
    def write_backlog_pages(self) -> int:
        """The remote write backlog's bound in pages (see `remote_write_backlog_pages`)."""
        b = self.remote_write_backlog_pages
        return b if b is not None else max(64, self.host_pages // 8)

    @property
    def has_host_tier(self) -> bool:
        return self.host_pages > 0

    @property
    def has_remote_tier(self) -> bool:
        return self.remote_pages > 0


def _number(low: float, high: float = math.inf, *, low_open: bool = False):
    def check(v: object) -> str | None:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if ok and (v > low if low_open else v >= low) and v <= high:
            return None
        bound = f"{'>' if low_open else '>='} {low}" + (
            "" if high == math.inf else f" and <= {high}"
        )
        return f"must be a finite number {bound}"

    return check


def _one_of(choices: tuple[str, ...]):
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _policy(v: object) -> str | None:
    try:
        make_policy(v)  # raises ValueError naming the choices
    except (ValueError, TypeError) as err:
        return str(err)
    return None


# The cache's settings an engine passes through unchanged: defined (default, rule) here once;
# `engine.config.EngineConfig` takes them by these names and validates them with these rules.
ENGINE_SETTINGS = {
    "policy": _policy,
    "write_policy": _one_of(WRITE_POLICIES),
    "remote_timeout_s": _number(0, low_open=True),
    "remote_load_margin": _number(0),
    "remote_admission": _number(0, 1),
}


def cache_default(name: str) -> object:
    """A `CacheConfig` field's default (so another config can share it rather than repeat it)."""
    return CacheConfig.__dataclass_fields__[name].default


def check_engine_settings(owner: str, values: dict[str, object]) -> None:
    """Raise ValueError("{owner}.{name} ...") for the first of `values` its rule refuses."""
    for name, value in values.items():
        if (why := ENGINE_SETTINGS[name](value)) is not None:
            raise ValueError(f"{owner}.{name} {why}, got {value!r}")
