"""The remote tier's circuit breaker: its state machine under any sequence of calls, and a slow
store under a real cache: timeouts mark the tier degraded, later calls fail at once instead of
waiting, and the tier comes back once the store answers in time."""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import FileStore
from storage.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, Permit
from tests.test_cache_tiers import SEQ, make, serve


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _call(b: CircuitBreaker, ok: bool, error: str = "down") -> bool:
    """One call through the breaker; False if it was refused."""
    permit = b.allow()
    if permit is None:
        return False
    b.success(permit) if ok else b.failure(permit, error)
    return True


def test_opens_after_consecutive_failures_and_probes_after_the_backoff():
    clock = FakeClock()
    b = CircuitBreaker("test", failures_to_open=3, backoff_s=1.0, max_backoff_s=3.0, clock=clock)
    _call(b, False)
    _call(b, True)  # resets the run of failures
    _call(b, False)
    _call(b, False)
    assert b.state == CLOSED
    b.failure(b.allow(), TimeoutError())
    assert b.state == OPEN and b.degraded and b.as_dict()["last_error"] == "TimeoutError"
    assert b.allow() is None
    clock.now = 1.0
    probe = b.allow()
    assert probe.probe and b.state == HALF_OPEN and b.allow() is None  # only one probe
    b.failure(probe, "still down")  # twice the wait
    clock.now = 2.9
    assert b.allow() is None
    clock.now = 3.0
    assert _call(b, False)  # 4 s, capped at 3
    clock.now = 5.9
    assert b.allow() is None
    clock.now = 6.0
    assert _call(b, True)
    assert b.state == CLOSED and not b.degraded and not b.allow().probe
    assert b.as_dict()["times_opened"] == 1 and b.as_dict()["calls_rejected"] == 4
    for _ in range(3):
        _call(b, False)
    clock.now += 1.0  # back to the base backoff after recovering
    assert b.allow().probe


def test_calls_from_before_the_opening_neither_close_it_nor_fail_its_probe():
    clock = FakeClock()
    b = CircuitBreaker("test", failures_to_open=1, clock=clock)
    early, late = b.allow(), b.allow()
    b.failure(early, "down")
    b.success(late)  # started before the circuit opened
    assert b.state == OPEN and b.allow() is None
    stale = Permit(probe=False)  # a call let through before the opening, still running
    clock.now = 1.0
    probe = b.allow()
    b.failure(stale, "old news")  # an older call failing does not count as the probe's failure
    assert b.state == HALF_OPEN and b.allow() is None
    b.success(probe)
    assert b.state == CLOSED


@pytest.mark.parametrize(
    "kwargs", [{"failures_to_open": 0}, {"backoff_s": 0}, {"backoff_s": 2, "max_backoff_s": 1}]
)
def test_bad_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        CircuitBreaker("test", **kwargs)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.just(("start", None)),  # a call asks to go to the store
            st.tuples(st.just("finish"), st.booleans()),  # the oldest call in flight ends
            st.tuples(st.just("wait"), st.floats(0.0, 5.0)),
        ),
        max_size=80,
    )
)
def test_concurrent_calls_never_break_the_state_machine(events):
    clock = FakeClock()
    b = CircuitBreaker("test", failures_to_open=2, backoff_s=0.5, max_backoff_s=3.0, clock=clock)
    in_flight: list[Permit] = []
    opened_at = None
    for kind, arg in events:
        if kind == "wait":
            clock.now += arg
        elif kind == "start":
            was = b.state
            permit = b.allow()
            if permit is not None:
                assert permit.probe == (was != CLOSED)
                if permit.probe:
                    assert not any(p.probe for p in in_flight), "two probes in flight"
                    assert clock.now - opened_at >= b.base_backoff_s - 1e-9, "probed too early"
                in_flight.append(permit)
            else:
                assert was != CLOSED, "a closed circuit refused a call"
                if was == OPEN:  # (half-open refuses everything while its probe is in flight)
                    assert clock.now - opened_at < b.max_backoff_s + 1e-9, "backed off too long"
        elif in_flight:
            permit, before = in_flight.pop(0), b.state
            if arg:
                b.success(permit)
                assert b.state == (CLOSED if permit.probe else before)
            else:
                b.failure(permit, "boom")
                if permit.probe:
                    assert b.state == OPEN
                elif before != CLOSED:
                    assert b.state == before, "a stale failure moved an open circuit"
                if b.state == OPEN and before != OPEN:
                    opened_at = clock.now
        assert b.degraded == (b.state != CLOSED)


class SlowStore(FileStore):
    """A real file store whose reads take `delay` seconds (a store under load)."""

    delay = 0.0

    async def exists(self, keys):
        await asyncio.sleep(self.delay)
        return await super().exists(keys)

    async def get(self, keys, max_bytes=None):
        await asyncio.sleep(self.delay)
        return await super().get(keys)


def test_a_slow_store_is_marked_degraded_then_recovers(tmp_path):
    store = SlowStore(tmp_path / "remote")
    cache = make(tmp_path, store=store, remote_timeout_s=0.3)
    serve(cache, SEQ, prefetch=False)
    cache.flush()
    store.delay = 5.0
    for _ in range(3):  # each read times out: a miss, and the tree forgets the pages
        ticket = cache.prefetch(SEQ, discover=True)
        cache.wait_idle(timeout_s=5)
        assert ticket.fetched_tokens == 0
    status = cache.remote_status()
    assert status["degraded"] and "Timeout" in status["last_error"]
    t = time.monotonic()
    ticket = cache.prefetch(SEQ)  # refused at once, not after another timeout
    cache.wait_idle(timeout_s=5)
    assert time.monotonic() - t < 0.2 and ticket.fetched_tokens == 0
    assert cache.remote_status()["calls_rejected"] >= 1
    store.delay = 0.0
    time.sleep(1.1)  # past the first backoff: the next call is the probe
    ticket = cache.prefetch(SEQ)
    cache.wait_idle(timeout_s=5)
    assert not cache.remote_status()["degraded"]
    assert ticket.fetched_tokens == len(SEQ)  # found again by discovery and fetched
    cache.check_integrity()
    cache.close()
