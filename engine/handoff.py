"""A decode engine's handoff: a prompt's pages come from a prefill engine through the shared
tier, the shared tier's normal pages (same namespace, integrity checks, breaker).

A request admitted to a decode engine waits in the queue, without blocking the others, until
its prompt's full pages (all but the last token's, page-aligned) are on this engine's device or
host, fetching from the shared tier what appears there, asked again every `POLL_S`; after
`timeout_s` it is admitted with what has arrived and the engine computes the rest itself. The
pages it found are then loaded layer by layer like any remote hit.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.request import Request
    from radixkv.cache.prefix_cache import PrefixCache

POLL_S = 0.01  # how often the shared tier is asked again for pages not there yet


@dataclass
class HandoffWait:
    """One request's wait (on `Request.handoff`): until `until`, for `target` prompt tokens."""

    started: float
    until: float
    target: int
    poll_at: float = 0.0
    # the earlier looks' fetches: their host pages stay held until the handoff ends
    earlier: list = field(default_factory=list)


class Handoffs:
    """The decode engine's handoff waits and their counters (a part of the scheduler)."""

    def __init__(self, cache: PrefixCache, timeout_s: float) -> None:
        self.cache, self.timeout_s = cache, timeout_s
        self.completed = 0  # requests whose prompt pages all arrived in time
        self.timed_out = 0  # requests that computed what had not arrived
        self.tokens = 0  # prompt tokens found in the shared tier by handoff requests
        self.wait_s = 0.0  # time requests spent waiting, in all

    def start(self, req: Request, now: float) -> None:
        """`req` joins the queue: it waits for its prompt's pages (if it has a full page)."""
        target = (len(req.prompt_ids) - 1) // self.cache.page_size * self.cache.page_size
        if target == 0 or req.prefetch is None:
            return
        req.handoff = HandoffWait(started=now, until=now + self.timeout_s, target=target)
        req.prefetch.wait_until = req.handoff.until  # waiting for the fetch is the point

    def ready(self, req: Request, now: float) -> bool:
        """Whether `req`'s handoff is over (its pages arrived, or its time ran out); else ask
        the shared tier again when its poll comes due. On the engine thread."""
        wait = req.handoff
        if wait is None:
            return True
        if not req.prefetch.done and now < wait.until:
            return False
        hit = self.cache.match(req.prompt_ids[:-1], touch=False)
        arrived = hit.device_tokens + hit.host_tokens
        if arrived < wait.target and now < wait.until:
            if now >= wait.poll_at:  # the last look found a gap: look again
                wait.earlier.append(req.prefetch)
                req.prefetch = self.cache.prefetch(req.prompt_ids[:-1])
                req.prefetch.wait_until = wait.until
                wait.poll_at = now + POLL_S
            return False
        if arrived >= wait.target:
            self.completed += 1
        else:
            self.timed_out += 1
        self.tokens += arrived
        self.wait_s += now - wait.started
        # what the earlier looks fetched counts as remote hits too (`Admission._count_hit`)
        req.handoff_fetched = sum(t.fetched_tokens for t in wait.earlier)
        self.end(req)
        return True

    def end(self, req: Request) -> None:
        """Let go of `req`'s handoff (over, or the request finished while waiting): the earlier
        looks' holds are released; the current one stays the request's (`req.prefetch`)."""
        if req.handoff is not None:
            for ticket in req.handoff.earlier:
                self.cache.release_prefetch(ticket)
            req.handoff = None

    def next_poll(self, waiting) -> float | None:
        """(time.monotonic) the first poll or deadline among `waiting` requests' handoffs whose
        last look is done: the engine thread sleeps no longer than that."""
        times = [
            min(r.handoff.poll_at, r.handoff.until)
            for r in waiting
            if r.handoff is not None and r.prefetch.done
        ]
        return min(times, default=None)

    def report(self) -> dict:
        return {
            "completed": self.completed,
            "timed_out": self.timed_out,
            "tokens": self.tokens,
            "wait_s": round(self.wait_s, 3),
        }
