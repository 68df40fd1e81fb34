"""Logs that cannot flood: a record that repeats (a store full of forged pages, a client
flooding the accept loop) is logged at most once per interval, with a count of those held back."""

from __future__ import annotations

import logging
import threading
import time


class RateLimitFilter(logging.Filter):
    """Let records whose message contains `needle` through at most once per `interval_s`; the
    next one through says how many were held back. Thread-safe."""

    def __init__(self, needle: str, interval_s: float = 10.0) -> None:
        super().__init__()
        self.needle, self.interval_s = needle, interval_s
        self.last, self.held = -float("inf"), 0
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.needle not in str(record.msg):
            return True
        with self.lock:
            now = time.monotonic()
            if now - self.last < self.interval_s:
                self.held += 1
                return False
            held, self.held, self.last = self.held, 0, now
        if held:
            record.msg = (
                f"{record.msg} (and {held} more like it in the last {self.interval_s:.0f} s)"
            )
        return True


def limit_repeats(logger: logging.Logger, needle: str, interval_s: float = 10.0) -> None:
    """Rate-limit `logger`'s records that contain `needle` (once per logger and needle)."""
    if not any(isinstance(f, RateLimitFilter) and f.needle == needle for f in logger.filters):
        logger.addFilter(RateLimitFilter(needle, interval_s))
