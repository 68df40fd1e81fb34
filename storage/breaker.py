"""A circuit breaker for the remote tier: a failing store costs a few timeouts, not every request.

closed:    calls go through; `failures_to_open` failures in a row open the circuit.
open:      calls fail at once with `StoreUnavailable` (the cache treats them as misses and skipped
           writes, requests recompute) for `backoff_s`, doubling up to `max_backoff_s`.
half-open: after the backoff one call goes through as a probe: success closes the circuit,
           failure opens it again.
Each change of state is logged once, in words, and `degraded` is what health checks report.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class StoreUnavailable(ConnectionError):
    """The remote tier is marked down; the call was not attempted."""


class CircuitBreaker:
    def __init__(
        self,
        name: str,
        *,
        failures_to_open: int = 3,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        clock=time.monotonic,
    ) -> None:
        if failures_to_open < 1 or backoff_s <= 0 or max_backoff_s < backoff_s:
            raise ValueError("need failures_to_open >= 1 and 0 < backoff_s <= max_backoff_s")
        self.name = name
        self.failures_to_open = failures_to_open
        self.base_backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self._clock = clock
        self._lock = threading.Lock()
        self.state = CLOSED
        self._failures = 0
        self._backoff_s = backoff_s
        self._retry_at = 0.0
        self._probing = False
        self.opened_count = 0
        self.rejected = 0
        self.last_error: str | None = None

    @property
    def degraded(self) -> bool:
        return self.state != CLOSED

    def allow(self) -> bool:
        """Whether a call may go to the store now (in half-open: only the one probe)."""
        with self._lock:
            if self.state == CLOSED:
                return True
            if self.state == OPEN and self._clock() >= self._retry_at:
                self.state, self._probing = HALF_OPEN, False
            if self.state == HALF_OPEN and not self._probing:
                self._probing = True
                return True
            self.rejected += 1
            return False

    def success(self) -> None:
        with self._lock:
            if self.state == OPEN:
                return  # a call from before the circuit opened: only the probe may close it
            recovered = self.state != CLOSED
            self.state, self._failures, self._probing = CLOSED, 0, False
            self._backoff_s = self.base_backoff_s
        if recovered:
            log.warning("remote tier %s is reachable again: serving from it again", self.name)

    def failure(self, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
        with self._lock:
            self.last_error = text
            self._failures += 1
            if self.state == HALF_OPEN:  # the probe failed: back off longer
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
            elif self.state == OPEN or self._failures < self.failures_to_open:
                return
            first = self.state == CLOSED
            self.state, self._probing = OPEN, False
            self._retry_at = self._clock() + self._backoff_s
            if first:
                self.opened_count += 1
        if first:
            log.warning(
                "remote tier %s is failing (%s): marked degraded, requests recompute instead; "
                "retrying in %.0f s",
                self.name,
                text,
                self._backoff_s,
            )

    def as_dict(self) -> dict:
        with self._lock:
            return {
                "state": self.state,
                "degraded": self.state != CLOSED,
                "times_opened": self.opened_count,
                "calls_rejected": self.rejected,
                "last_error": self.last_error,
            }
