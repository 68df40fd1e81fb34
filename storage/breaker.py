"""A circuit breaker for the remote tier: a failing store costs a few timeouts, not every request.

closed:    calls go through; `failures_to_open` failures in a row open the circuit.
open:      calls fail at once with `StoreUnavailable` (the cache treats them as misses and skipped
           writes, requests recompute) for `backoff_s`, doubling up to `max_backoff_s`.
half-open: after the backoff one call goes through as a probe: success closes the circuit,
           failure opens it again.
`allow()` hands each call let through a `Permit` that says whether it is the probe; the call
reports back with it, so a call that started before the circuit opened and ends later can
neither close the circuit nor count as the probe's failure.
Each change of state is logged once, in words, and `degraded` is what health checks report.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class StoreUnavailable(ConnectionError):
    """The remote tier is marked down; the call was not attempted."""


@dataclass(frozen=True)
class Permit:
    """A call let through; `probe`: the one call of a half-open circuit."""

    probe: bool


_CALL, _PROBE = Permit(False), Permit(True)


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

    def allow(self) -> Permit | None:
        """A permit if a call may go to the store now (in half-open: only the one probe), else
        None. The call reports its outcome with `success(permit)` or `failure(permit, error)`."""
        with self._lock:
            if self.state == CLOSED:
                return _CALL
            if self.state == OPEN and self._clock() >= self._retry_at:
                self.state, self._probing = HALF_OPEN, False
            if self.state == HALF_OPEN and not self._probing:
                self._probing = True
                return _PROBE
            self.rejected += 1
            return None

    def success(self, permit: Permit) -> None:
        with self._lock:
            if not permit.probe:
                if self.state == CLOSED:
                    self._failures = 0
                return  # a call from before the circuit opened: only the probe may close it
            assert self.state == HALF_OPEN and self._probing, "a probe outside half-open"
            self.state, self._failures, self._probing = CLOSED, 0, False
            self._backoff_s = self.base_backoff_s
        log.warning("remote tier %s is reachable again: serving from it again", self.name)

    def failure(self, permit: Permit, error: BaseException | str) -> None:
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}".rstrip(": ")
        with self._lock:
            self.last_error = text
            if permit.probe:  # the probe failed: back off longer
                assert self.state == HALF_OPEN and self._probing, "a probe outside half-open"
                self._backoff_s = min(self._backoff_s * 2, self.max_backoff_s)
            else:
                if self.state != CLOSED:
                    return  # already open: a late failure of an older call changes nothing
                self._failures += 1
                if self._failures < self.failures_to_open:
                    return
            first = self.state == CLOSED
            self.state, self._probing = OPEN, False
            self._retry_at = self._clock() + self._backoff_s
            if first:
                self.opened_count += 1
        if first:
            log.warning(
                "remote tier %s is failing (%s): marked degraded, requests recompute instead; "
                "retrying in %.1f s",
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
