"""Load or recompute? An estimate from measured speeds, so a slow remote tier is skipped.

Loading `n` remote tokens costs about `latency + bytes / bandwidth` (measured on this process's
own remote reads); recomputing them costs `n / prefill tokens per second` (measured on this
process's own prefill steps). A remote read estimated slower than recomputing is not started:
the request recomputes those tokens. Until both speeds have been measured, reads go ahead.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class LoadCostModel:
    alpha: float = 0.2  # weight of a new measurement in the moving averages
    margin: float = 1.0  # fetch only if load time * margin < recompute time
    remote_latency_s: float | None = None
    remote_bytes_per_s: float | None = None
    prefill_tokens_per_s: float | None = None
    skipped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _avg(self, old: float | None, new: float) -> float:
        return new if old is None else (1 - self.alpha) * old + self.alpha * new

    def observe_remote_read(self, nbytes: int, seconds: float, small_bytes: int) -> None:
        """A completed read: reads of at most `small_bytes` update the latency, larger ones the
        bandwidth (after the latency, once known, is taken off: until then a large read counts
        as all transfer, which errs towards a slower store)."""
        if seconds <= 0 or nbytes <= 0:
            return
        with self._lock:
            if nbytes <= small_bytes:
                self.remote_latency_s = self._avg(self.remote_latency_s, seconds)
                return
            transfer = max(seconds - (self.remote_latency_s or 0.0), seconds * 0.1)
            self.remote_bytes_per_s = self._avg(self.remote_bytes_per_s, nbytes / transfer)

    def observe_prefill(self, tokens: int, seconds: float) -> None:
        if tokens > 0 and seconds > 0:
            with self._lock:
                self.prefill_tokens_per_s = self._avg(self.prefill_tokens_per_s, tokens / seconds)

    def load_seconds(self, nbytes: int) -> float | None:
        if self.remote_bytes_per_s is None:
            return None
        return (self.remote_latency_s or 0.0) + nbytes / self.remote_bytes_per_s

    def recompute_seconds(self, tokens: int) -> float | None:
        return None if self.prefill_tokens_per_s is None else tokens / self.prefill_tokens_per_s

    def worth_loading(self, tokens: int, nbytes: int) -> bool:
        load, recompute = self.load_seconds(nbytes), self.recompute_seconds(tokens)
        if load is None or recompute is None or load * self.margin < recompute:
            return True
        self.skipped += 1
        return False

    def as_dict(self) -> dict:
        return {
            "remote_latency_s": self.remote_latency_s,
            "remote_bytes_per_s": self.remote_bytes_per_s,
            "prefill_tokens_per_s": self.prefill_tokens_per_s,
            "remote_reads_skipped_as_slower": self.skipped,
        }
