"""What the scheduler's parts share: the queues, the counters and the limits (one object, the
`Scheduler`, owns them; its parts are split by seam across `engine/admission.py`,
`engine/page_tables.py` and `engine/outputs.py`)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from engine.forward_batch import ForwardBatch
from engine.handoff import Handoffs
from engine.request import Request
from radixkv.cache.prefix_cache import PrefixCache

PREFILL_SAMPLE_MIN_TOKENS = 64  # steps with fewer prefill tokens say little about its speed
DEFER_MIN_TOKENS = 64  # a shared, still-uncached prefix worth waiting for (admission)
RESERVE_CLIP_TOKENS = 4096  # admission reserves for at most this many more output tokens
RATIO_INIT, RATIO_MIN, RATIO_ALPHA = 0.7, 0.1, 0.1  # the new-token ratio's start, floor, EMA


@dataclass
class ScheduledBatch:
    """What one step runs: (request, tokens to compute) per sequence, and its forward batch."""

    plan: list[tuple[Request, int]]
    forward: ForwardBatch


class SchedulerState:
    """The scheduler's state, declared once for its parts."""

    cache: PrefixCache
    device: torch.device
    max_batch_tokens: int
    max_running: int
    eos_token_ids: set[int]
    detokenize: Callable[[list[int]], str] | None
    starvation_steps: int
    check_integrity: bool
    prefetch_pages: int  # the prefetcher's budget between two steps (0: off)
    handoffs: Handoffs | None  # a decode engine's waits for prompts' pages (None: not one)
    waiting: deque[Request]
    running: list[Request]
    steps: int
    preemptions: int
    admission_waits: int  # steps admission stopped for memory with a request waiting
    continued_steps: int  # decode steps queued before the last one's tokens were read
    adopted_tokens: int  # prompt tokens loaded between chunks instead of computed
    new_token_ratio: float  # the share of max_tokens requests produce (EMA): decode room
    on_finish: Callable[[Request], None] | None  # called with every request that finishes
    _waited: dict[int, int]  # rid -> the step it (re)joined the queue
    # the last admission stopped for memory: until a request leaves (`_release`), waiting
    # requests cannot be admitted, so a decode step may be continued without admitting
    _admission_blocked: bool
    _blocked_head: Request | None  # the request admission waits for memory for
    _holds_yielded: bool  # the queue's prefetch holds yielded to admission

    @property
    def page_size(self) -> int:
        """Tokens per page: the cache's."""
        return self.cache.page_size

    def _window(self) -> Iterator[Request]:
        """The head of the queue admission looks at: a bounded FIFO window, so that admission
        never re-matches the whole queue every step."""
        return itertools.islice(self.waiting, 4 * self.max_running)
