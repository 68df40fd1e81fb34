"""The clock of a timed trace replay: what each request's hits by tier would cost in time.

Requests arrive at their trace timestamps (times `time_scale`). One serving GPU computes the
tokens no tier holds at `prefill_tokens_per_s`, one request after another; the host->device link
and the remote->host link each move one request's pages at a time, at their bandwidths (the
remote link pays `remote_latency_ms` per request that reads it). A request's loads start when it
arrives (layer-wise loading overlaps them with its compute), and its first token comes when both
its compute and its loads are done:

    remote_done = max(arrival, remote_free) + latency + remote_bytes / remote_bw
    load_done   = max(max(arrival, h2d_free) + host_bytes / h2d_bw, remote_done)
                  + remote_bytes / h2d_bw
    compute     = max(arrival, gpu_free) + uncached_tokens / prefill_tokens_per_s
    TTFT        = max(compute, load_done) - arrival

Decode steps are not charged (the replay has no batching); outputs matter only through the next
turn's prompt, which the trace already holds. The defaults are this engine's own measurements on
an H200 with llama-3-8b shapes (benchmarks/gpu_engine.py: prefill 41,889 tokens/s, pinned
host->device 50.7 GB/s; KV 128 KiB a token); the remote link's are a flag's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from radixkv.eviction import DEVICE, HOST, REMOTE


@dataclass(frozen=True)
class CostModel:
    prefill_tokens_per_s: float = 41_889.0
    kv_bytes_per_token: int = 131_072
    h2d_gbps: float = 50.7
    remote_gbps: float = 10.0
    remote_latency_ms: float = 1.0
    time_scale: float = 1.0  # multiplies the trace's timestamps (2: half the arrival rate)

    def __post_init__(self) -> None:
        for name in ("prefill_tokens_per_s", "h2d_gbps", "remote_gbps", "time_scale"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name.replace('_', '-')} must be a positive number, got {v}")
        if self.kv_bytes_per_token <= 0:
            raise ValueError("kv-bytes-per-token must be positive")
        if not (self.remote_latency_ms >= 0 and math.isfinite(self.remote_latency_ms)):
            raise ValueError("remote-latency-ms must be >= 0")


@dataclass
class ServingClock:
    """The simulated GPU and links; `serve` returns one request's TTFT in seconds."""

    cost: CostModel
    gpu_free: float = 0.0
    h2d_free: float = 0.0
    remote_free: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    queued_s: float = 0.0  # total time requests waited for the GPU
    last_done: float = 0.0  # the latest first token
    busy_s: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # gpu, h2d, remote

    def serve(self, arrival_s: float, total_tokens: int, hit_tokens: list[int]) -> float:
        c = self.cost
        per_token = c.kv_bytes_per_token
        remote_bytes = hit_tokens[REMOTE] * per_token
        host_bytes = hit_tokens[HOST] * per_token
        remote_done = arrival_s
        if remote_bytes:
            start = max(arrival_s, self.remote_free)
            took = c.remote_latency_ms / 1e3 + remote_bytes / (c.remote_gbps * 1e9)
            remote_done = self.remote_free = start + took
            self.busy_s[2] += took
        load_done = arrival_s
        if host_bytes or remote_bytes:
            start = max(arrival_s, self.h2d_free)
            host_done = start + host_bytes / (c.h2d_gbps * 1e9)
            load_done = max(host_done, remote_done) + remote_bytes / (c.h2d_gbps * 1e9)
            self.busy_s[1] += (host_bytes + remote_bytes) / (c.h2d_gbps * 1e9)
            self.h2d_free = load_done
        uncached = total_tokens - sum(hit_tokens[t] for t in (DEVICE, HOST, REMOTE))
        start = max(arrival_s, self.gpu_free)
        self.queued_s += start - arrival_s
        took = uncached / c.prefill_tokens_per_s
        self.gpu_free = start + took
        self.busy_s[0] += took
        ttft = max(self.gpu_free, load_done) - arrival_s
        self.last_done = max(self.last_done, arrival_s + ttft)
        self.ttfts.append(ttft)
        return ttft

    def report(self, duration_s: float) -> dict:
        """TTFT percentiles (ms, nearest rank), mean queueing, and how busy the GPU and links
        were over the arrivals' span or until the last first token, whichever is longer."""
        xs = sorted(self.ttfts)
        n = len(xs)

        def pct(p: float) -> float:
            return xs[min(n - 1, int(p * n))] * 1e3 if n else float("nan")

        span = max(duration_s, self.last_done, 1e-9)
        return {
            "ttft_ms": {
                "mean": sum(xs) / n * 1e3 if n else float("nan"),
                "p50": pct(0.50),
                "p90": pct(0.90),
                "p99": pct(0.99),
            },
            "queued_ms_mean": self.queued_s / n * 1e3 if n else float("nan"),
            "utilisation": {
                "gpu": self.busy_s[0] / span,
                "host_link": self.busy_s[1] / span,
                "remote_link": self.busy_s[2] / span,
            },
            "simulated_seconds": span,
            "cost_model": self.cost.__dict__,
        }
