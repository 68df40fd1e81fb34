"""Serving metrics and their Prometheus text format.

Latency histograms are observed by the engine thread and read by the HTTP thread; a lock per
histogram keeps a scrape consistent. Everything else is collected on the engine thread at scrape
time (`EngineLoop.call`), so it never races the scheduler.
"""

from __future__ import annotations

import bisect
import threading

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

    def render(self) -> list[str]:
        with self._lock:
            counts, total = list(self._counts), self._sum
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, c in zip((*self.buckets, float("inf")), counts, strict=True):
            running += c
            le = "+Inf" if bound == float("inf") else repr(bound)
            lines.append(f'{self.name}_bucket{{le="{le}"}} {running}')
        lines += [f"{self.name}_sum {total}", f"{self.name}_count {running}"]
        return lines


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


class Exposition:
    """Builds one Prometheus text exposition; each metric family gets HELP and TYPE once."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._declared: set[str] = set()

    def add(self, name: str, kind: str, help_text: str, value: float, **labels: str) -> Exposition:
        if name not in self._declared:
            self._declared.add(name)
            self.lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        self.lines.append(f"{name}{_labels(labels)} {value}")
        return self

    def histogram(self, h: Histogram) -> Exposition:
        self.lines += h.render()
        return self

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"
