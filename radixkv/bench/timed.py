"""The clock of a timed trace replay: what each request's hits by tier cost in time.

Requests arrive at their trace timestamps (times `time_scale`) and wait in one FIFO queue for one
serving GPU. A request's remote part is read on arrival (the engine's scheduler starts that
read while the request waits) over the remote->host link, one request at a time, paying
`remote_latency_ms` per read. Its host part (what it found on host, and what came from remote)
is copied host->device in its turn on the GPU, layer by layer under its compute, as the engine
does: the turn lasts as long as the longer of the two. So

    remote_done = max(arrival, remote_free) + latency + remote_bytes / remote_bw
    start       = max(arrival, gpu_free)
    load_done   = max(start, h2d_free, remote_done) + load_bytes / h2d_bw
    compute     = uncached / prefill_tokens_per_s + (prompt² - cached²) / 2 / attention_pairs_per_s
    TTFT        = max(start + compute, load_done) - arrival

A prefetcher may use the host->device link while it is idle before the next turn needs it
(`idle_tokens` / `book`): what it moves to the device before a turn is not loaded in it.
The second term of `compute` is attention over the prompt: each new token attends to every
token before it, (prompt² - cached²) / 2 (query, key) pairs, which the first term's flat rate
leaves out (off by default). Decode steps are not charged (the replay has no batching); outputs
matter only through the next turn's prompt, which the trace already holds. The defaults are
this engine's own measurements on an H200 with llama-3-8b shapes and a 4K prompt
(benchmarks/gpu_engine.py: prefill 41,889 tokens/s, pinned host->device 50.7 GB/s; KV 128 KiB a
token); the remote link's are a flag's. On long prompts they are far off: `trace --engine
--mode timed` models its run a second time with both terms set from the engine's measured
speed (`radixkv.bench.engine_replay_command.calibrated`).

With `remote_measured`, a remote read's fixed cost is not the `remote_latency_ms` flag but what
the replay's real store took for that very read (its calls, per-page keys, the codec's checks:
the replay runs them inline and times them). The bytes are still charged at `remote_gbps`: the
replay's pages carry a token's id, not its 128 KiB of KV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class CostModel:
    prefill_tokens_per_s: float = 41_889.0
    kv_bytes_per_token: int = 131_072
    h2d_gbps: float = 50.7
    remote_gbps: float = 10.0
    remote_latency_ms: float = 1.0
    time_scale: float = 1.0  # multiplies the trace's timestamps (2: half the arrival rate)
    remote_measured: bool = False  # a read's fixed cost: the real store's time for it (above)
    attention_pairs_per_s: float = math.inf  # prefill's attention term (above); inf: not charged

    def __post_init__(self) -> None:
        for name in ("prefill_tokens_per_s", "h2d_gbps", "remote_gbps", "time_scale"):
            v = getattr(self, name)
            if not (v > 0 and math.isfinite(v)):
                raise ValueError(f"{name.replace('_', '-')} must be a positive number, got {v}")
        if not self.attention_pairs_per_s > 0:
            raise ValueError(f"attention-pairs-per-s must be > 0, got {self.attention_pairs_per_s}")
        if self.kv_bytes_per_token <= 0:
            raise ValueError("kv-bytes-per-token must be positive")
        if not (self.remote_latency_ms >= 0 and math.isfinite(self.remote_latency_ms)):
            raise ValueError("remote-latency-ms must be >= 0")

    def prefill_s(self, prompt: int, uncached: int) -> float:
        """Seconds to prefill the last `uncached` of `prompt` tokens (module doc)."""
        cached = prompt - uncached
        pairs = (prompt * prompt - cached * cached) / 2
        return uncached / self.prefill_tokens_per_s + pairs / self.attention_pairs_per_s


@dataclass
class ServingClock:
    """The simulated GPU and links (seconds); `serve` returns one request's TTFT."""

    cost: CostModel
    gpu_free: float = 0.0
    h2d_free: float = 0.0
    remote_free: float = 0.0
    ttfts: list[float] = field(default_factory=list)
    queued_s: float = 0.0  # total time requests waited for the GPU
    last_done: float = 0.0  # the latest first token
    busy_s: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # gpu, h2d, remote
    load_wait_s: float = 0.0  # GPU time spent waiting for loads beyond a turn's compute
    prefetch_s: float = 0.0  # host->device link time spent on prefetches
    store_reads: list[float] = field(default_factory=lambda: [0, 0.0])  # measured: n, seconds

    def _seconds(self, tokens: int, gbps: float) -> float:
        return tokens * self.cost.kv_bytes_per_token / (gbps * 1e9)

    def _remote_took(self, tokens: int, measured_s: float | None) -> float:
        """A remote read of `tokens`: its fixed cost (the flag's latency, or with
        `remote_measured` the store's measured time for it) plus its bytes at `remote_gbps`."""
        fixed = self.cost.remote_latency_ms / 1e3
        if self.cost.remote_measured and measured_s is not None:
            fixed = measured_s
            self.store_reads[0] += 1
            self.store_reads[1] += measured_s
        return fixed + self._seconds(tokens, self.cost.remote_gbps)

    def read_remote(self, arrival_s: float, tokens: int, measured_s: float | None = None) -> float:
        """A request's remote part read on its arrival (`measured_s`: what the real store took
        for it); returns when it is on host."""
        if not tokens:
            return arrival_s
        start = max(arrival_s, self.remote_free)
        took = self._remote_took(tokens, measured_s)
        self.remote_free = start + took
        self.busy_s[2] += took
        return self.remote_free

    def turn_start(self, arrival_s: float) -> float:
        return max(arrival_s, self.gpu_free)

    def serve(
        self,
        arrival_s: float,
        uncached_tokens: int,
        load_tokens: int = 0,
        remote_done_s: float | None = None,
        prompt_tokens: int | None = None,
    ) -> float:
        """A request's turn: compute `uncached_tokens` (the last of its `prompt_tokens`, default
        all of them), load `load_tokens` host->device (after its remote part is on host at
        `remote_done_s`); returns its TTFT."""
        start = self.turn_start(arrival_s)
        self.queued_s += start - arrival_s
        compute_done = start + self.cost.prefill_s(
            prompt_tokens or uncached_tokens, uncached_tokens
        )
        end = compute_done
        if load_tokens:
            load_start = max(start, self.h2d_free, remote_done_s or start)
            took = self._seconds(load_tokens, self.cost.h2d_gbps)
            self.h2d_free = load_start + took
            self.busy_s[1] += took
            end = max(end, self.h2d_free)
        self.busy_s[0] += compute_done - start
        self.load_wait_s += end - compute_done
        self.gpu_free = end
        ttft = end - arrival_s
        self.last_done = max(self.last_done, end)
        self.ttfts.append(ttft)
        return ttft

    def idle_tokens(self, now_s: float, until_s: float, *, remote: bool = False) -> int:
        """Tokens of KV the host->device (or remote->host) link can move between `now_s` and
        `until_s` without delaying a transfer that starts at `until_s`."""
        free, gbps = (
            (self.remote_free, self.cost.remote_gbps)
            if remote
            else (
                self.h2d_free,
                self.cost.h2d_gbps,
            )
        )
        idle = until_s - max(now_s, free) - (self.cost.remote_latency_ms / 1e3 if remote else 0)
        if idle <= 0:
            return 0
        if math.isinf(idle):
            return 1 << 62
        return int(idle * gbps * 1e9 / self.cost.kv_bytes_per_token)

    def book(
        self, now_s: float, tokens: int, *, remote: bool = False, measured_s: float | None = None
    ) -> None:
        """A prefetch of `tokens` over the host->device (or remote->host) link, starting when
        the link is free (`measured_s`: a remote read's time in the real store)."""
        if remote:
            took = self._remote_took(tokens, measured_s)
            self.remote_free = max(now_s, self.remote_free) + took
            self.busy_s[2] += took
            return
        took = self._seconds(tokens, self.cost.h2d_gbps)
        self.h2d_free = max(now_s, self.h2d_free) + took
        self.busy_s[1] += took
        self.prefetch_s += took

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
            "load_wait_ms_mean": self.load_wait_s / n * 1e3 if n else float("nan"),
            "utilisation": {
                "gpu": self.busy_s[0] / span,
                "host_link": self.busy_s[1] / span,
                "host_link_prefetch": self.prefetch_s / span,
                "remote_link": self.busy_s[2] / span,
            },
            "simulated_seconds": span,
            "store_reads_measured": {
                "reads": self.store_reads[0],
                "mean_ms": self.store_reads[1] / self.store_reads[0] * 1e3
                if self.store_reads[0]
                else None,
            },
            "cost_model": self.cost.__dict__,
        }
