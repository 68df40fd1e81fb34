"""Serving metrics in Prometheus form, through prometheus_client.

Latency histograms are observed by the engine thread and read by the HTTP thread; a lock per
histogram keeps a scrape consistent. Everything else is collected on the engine thread at scrape
time (`EngineLoop.call`), so it never races the scheduler, and handed to a custom collector.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

# seconds: 1 ms .. 60 s, dense where interactive serving lives
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_text, buckets
        self._counts = [0] * (len(buckets) + 1)  # last: +Inf
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value

    @property
    def count(self) -> int:
        with self._lock:
            return sum(self._counts)

    def family(self) -> HistogramMetricFamily:
        """The histogram as a Prometheus metric family (cumulative buckets, a consistent read)."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        buckets, running = [], 0
        for bound, c in zip((*self.buckets, float("inf")), counts, strict=True):
            running += c
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return HistogramMetricFamily(self.name, self.help, buckets=buckets, sum_value=total)


class ServingCollector:
    """A prometheus_client collector over values read at scrape time: the cache report (taken on
    the engine thread), the loop's serving stats and its latency histograms. Metric names are
    radixkv's public interface: keep them."""

    def __init__(self, report: dict, stats, page_bytes: int) -> None:
        self.report, self.stats, self.page_bytes = report, stats, page_bytes

    def collect(self) -> Iterator:
        r, s = self.report, self.stats
        yield _gauge(
            "radixkv_requests_running", "Requests in the running batch.", r["scheduler"]["running"]
        )
        yield _gauge(
            "radixkv_requests_waiting", "Requests waiting for admission.", r["scheduler"]["waiting"]
        )
        finished = CounterMetricFamily(
            "radixkv_requests_finished", "Finished requests by reason.", labels=["reason"]
        )
        for reason, n in sorted(s.finished.items()):
            finished.add_metric([reason], n)
        yield finished
        yield _counter(
            "radixkv_preemptions",
            "Requests preempted for device pages.",
            r["scheduler"]["preemptions"],
        )
        yield _counter(
            "radixkv_prompt_tokens", "Prompt tokens of finished requests.", s.prompt_tokens
        )
        yield _counter("radixkv_generation_tokens", "Generated tokens.", s.generation_tokens)
        yield _counter(
            "radixkv_cached_prompt_tokens",
            "Prompt tokens served from the cache, by tier.",
            s.cached_tokens,
            "tier",
        )
        yield _gauge(
            "radixkv_cache_hit_rate",
            "Cached tokens / queried tokens since start.",
            r["token_hit_rate"],
        )
        yield _gauge(
            "radixkv_cache_hit_rate_by_tier",
            "Hit rate by the tier that held the tokens.",
            r["hit_rate_by_tier"],
            "tier",
        )
        pages = GaugeMetricFamily(
            "radixkv_cache_pages", "Pages by tier and state.", labels=["tier", "state"]
        )
        for tier in ("device", "host"):
            p = r["pages"][tier]
            pages.add_metric([tier, "used"], p["capacity"] - p["free"])
            pages.add_metric([tier, "free"], p["free"])
        pages.add_metric(["remote", "used"], r["pages"]["remote"]["known"])
        yield pages
        yield _counter(
            "radixkv_cache_evicted_pages",
            "Pages evicted, by tier.",
            r["counters"]["evicted_pages"],
            "tier",
        )
        moved = {k: n * self.page_bytes for k, n in r["pages_moved"].items()}
        yield _counter("radixkv_transfer_bytes", "Bytes moved between tiers.", moved, "direction")
        yield _gauge(
            "radixkv_remote_queue_depth", "Remote store operations in flight.", r["remote_inflight"]
        )
        remote = r["remote"]
        if remote is not None:
            yield _gauge(
                "radixkv_remote_degraded",
                "1 while the remote tier is marked down (requests recompute).",
                int(remote["degraded"]),
            )
            yield _counter(
                "radixkv_remote_degraded",
                "Times the remote tier was marked down.",
                remote["times_opened"],
            )
            traffic = remote["traffic"]
            outcomes = {k: traffic[k] for k in ("hits", "misses", "corrupt", "put_failures")}
            yield _counter(
                "radixkv_remote_pages", "Remote page operations by outcome.", outcomes, "outcome"
            )
            yield _counter(
                "radixkv_remote_writes_shed",
                "Pages not written to the remote tier because its write backlog was full.",
                r["counters"]["remote_writes_shed"],
            )
            yield _gauge(
                "radixkv_remote_write_backlog_pages",
                "Pages written to the remote tier and not yet acknowledged.",
                r["remote_write_backlog_pages"],
            )
            yield _counter(
                "radixkv_remote_reads_skipped",
                "Remote reads skipped because recomputing was estimated faster.",
                remote["remote_reads_skipped_as_slower"],
            )
        pf = r["prefetch"]
        yield _counter(
            "radixkv_prefetch_pages",
            "Pages the prefetcher moved up a tier ahead of need, by outcome (useful: read "
            "before leaving the tier; wasted: left it unread).",
            {k: pf[f"{k}_pages"] for k in ("moved", "useful", "wasted")},
            "outcome",
        )
        yield _gauge(
            "radixkv_prefetch_precision",
            "Useful prefetched pages / prefetched pages (0 before any prefetch).",
            pf["precision"] or 0.0,
        )
        yield _gauge(
            "radixkv_prefetch_coverage",
            "Hit tokens served faster thanks to a prefetch / hit tokens.",
            pf["coverage"] or 0.0,
        )
        yield _counter("radixkv_step_errors", "Engine steps that raised.", s.step_errors)
        for h in (s.ttft, s.itl, s.e2e):
            yield h.family()


def _gauge(name: str, help_text: str, value, label: str | None = None) -> GaugeMetricFamily:
    return _family(GaugeMetricFamily, name, help_text, value, label)


def _counter(name: str, help_text: str, value, label: str | None = None) -> CounterMetricFamily:
    return _family(CounterMetricFamily, name, help_text, value, label)


def _family(cls, name: str, help_text: str, value, label: str | None):
    """A family of one value, or of one value per label (`value` a dict)."""
    if label is None:
        return cls(name, help_text, value=value)
    family = cls(name, help_text, labels=[label])
    for key, v in value.items():
        family.add_metric([key], v)
    return family


def exposition(collector: ServingCollector) -> bytes:
    """The Prometheus text format of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
