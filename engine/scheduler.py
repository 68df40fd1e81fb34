"""The continuous-batching scheduler on the HiRadixTree: it decides, the model runner executes.

`schedule()` (steps 1-4) returns the next batch; `process_outputs()` (step 5) applies the
runner's tokens. The scheduler talks to the cache only through `radixkv.cache.prefix_cache`.
  1. apply finished remote reads (`cache.poll()`);
  2. admit waiting requests, cache-aware: a request whose remote prefetch is still in flight waits
     without blocking the others; among ready ones, the longest cached prefix goes first unless
     someone has waited `starvation_steps` steps; one whose prompt shares a long prefix with a
     request still prefilling waits for that prefix to be cached. Admission matches the prefix,
     locks it, loads its host part to the device and takes its device pages as the start of the
     page table;
  3. schedule tokens under `max_batch_tokens`: every running request has pending tokens
     (all_ids[num_computed:]); those with one (decodes) go first, prefills get chunks of the rest;
     before its next chunk a prefilling request adopts whatever the cache now holds past what it
     computed (its remote fetch, landed after it was admitted; a prefix cached meanwhile);
  4. allocate device pages; when the pool runs dry, the queue's prefetch holds go first, then
     the newest request is preempted: its computed pages go into the tree (nothing recomputed if
     it comes back soon), it rejoins the queue front; then the prefetcher promotes, within
     `prefetch_pages`, waiting requests' host prefixes (held until their turn) and returning
     sessions' contexts;
  5. (the runner: one forward; a token where a request's pending tokens are all computed) a
     prefill chunk hands its computed full pages to the tree at once (still locked by the request);
     stop on EOS, stop tokens, stop strings or max_tokens, and hand finished pages to the tree.

Pages: a request's page table is tree pages it matched (locked) followed by pages it allocated;
`cache.insert` takes the full ones over, `cache.free` takes back a partial last page. The cache is
the only owner that frees pages.

The parts, one seam a file, each a base of `Scheduler` over the state `engine.scheduler_state`
declares: `engine.admission` (step 2, and the holds that yield to it), `engine.page_tables`
(steps 3-4, preemption), `engine.outputs` (step 5).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from engine.forward_batch import ForwardBatch, to_device
from engine.handoff import Handoffs
from engine.outputs import Outputs
from engine.request import Request, State
from engine.scheduler_state import RATIO_INIT, ScheduledBatch
from radixkv.cache.prefix_cache import PrefixCache
from storage import OutOfPages


class Scheduler(Outputs):
    """The scheduler: requests in, batches out; admission, pages and outputs are its parts."""

    def __init__(
        self,
        cache: PrefixCache,
        device: torch.device,
        *,
        max_batch_tokens: int = 2048,
        max_running: int = 64,
        eos_token_ids: tuple[int, ...] = (),
        detokenize: Callable[[list[int]], str] | None = None,
        starvation_steps: int = 32,
        check_integrity: bool = False,
        prefetch_pages: int = 0,
        handoff_timeout_s: float | None = None,
    ) -> None:
        if max_batch_tokens < 1 or max_running < 1:
            raise ValueError("max_batch_tokens and max_running must be >= 1")
        self.cache, self.device = cache, device
        self.max_batch_tokens, self.max_running = max_batch_tokens, max_running
        self.eos_token_ids = set(eos_token_ids)
        self.detokenize = detokenize
        self.starvation_steps = starvation_steps
        self.check_integrity = check_integrity
        self.prefetch_pages = prefetch_pages  # the prefetcher's budget between two steps (0: off)
        # a decode engine's waits for prompts' pages from the shared tier (None: not one)
        self.handoffs = None if handoff_timeout_s is None else Handoffs(cache, handoff_timeout_s)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.steps = 0
        self._waited: dict[int, int] = {}
        self.preemptions = 0
        self.admission_waits = 0  # steps admission stopped for memory with a request waiting
        self.continued_steps = 0  # decode steps queued before the last one's tokens were read
        self.adopted_tokens = 0  # prompt tokens loaded between chunks instead of computed
        # the last admission stopped for memory: until a request leaves (`_release`), waiting
        # requests cannot be admitted, so a decode step may be continued without admitting
        self._admission_blocked = False
        self._blocked_head: Request | None = None  # the request admission waits for memory for
        self._holds_yielded = False  # the queue's prefetch holds yielded to admission (below)
        # the share of max_tokens requests actually produce (EMA over finished requests): how
        # much decode room admission reserves per request; a preemption raises it
        self.new_token_ratio = RATIO_INIT
        # called with every request that finishes, whatever the reason (a server's output hook)
        self.on_finish: Callable[[Request], None] | None = None

    # ---- requests ----------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        # remote -> host while it waits; held there until it attaches or finishes
        req.prefetch = self.cache.prefetch(req.prompt_ids[:-1])
        if self.prefetch_pages:  # host -> device while it waits (between steps, budgeted)
            req.expectation = self.cache.expect(req.prompt_ids[:-1])
        if self.handoffs is not None:  # a prefill engine is writing its pages to the shared tier
            self.handoffs.start(req, time.monotonic())
        self.waiting.append(req)
        self._waited[req.rid] = self.steps

    def abort(self, req: Request) -> None:
        """Cancel a request wherever it is; its pages go back (computed ones into the tree)."""
        if req.state == State.FINISHED:
            return
        if req in self.running:
            self.running.remove(req)
            self._release(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self._finish(req, "abort")

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def next_prefetch_deadline(self) -> float | None:
        """(time.monotonic) when the first waiting request stops waiting for its remote fetch, or
        a handoff asks the shared tier again."""
        times = [
            r.prefetch.wait_until for r in self._window() if r.prefetch and not r.prefetch.done
        ]
        poll = None if self.handoffs is None else self.handoffs.next_poll(self._window())
        if poll is not None:
            times.append(poll)
        return min(times, default=None)

    # ---- one step ----------------------------------------------------------------------------
    def prefetch(self) -> int:
        """Run the prefetcher within its budget: after each step's admission and, with nothing
        to run, while the engine idles (returning sessions come due while every client thinks).
        Its copies go on the side stream, which no step waits for. (While admission waits for
        memory, promoting for the queue would only be undone.) Returns pages put on the device."""
        if not self.prefetch_pages or self._holds_yielded:
            return 0
        if self._admission_blocked:
            # the head alone: its hold is part of its own admission (locked, so admission
            # charges it no more), not room taken from it; running requests' growth still
            # takes it back first
            head = self._blocked_head
            if head is None or head.expectation is None:
                return 0
            return self.cache.prefetch_expected(head.expectation, self.prefetch_pages)
        return self.cache.prefetch_step(self.prefetch_pages)

    def schedule(self) -> ScheduledBatch | None:
        """Admit, plan and reserve pages for the next batch; None when nothing can run."""
        self.steps += 1
        self.cache.poll()
        self._admit()
        plan = self._plan()
        self.prefetch()  # after admission and this step's pages: for requests still waiting
        if not plan:
            return None
        sequences, sampling = [], []
        for r, n in plan:
            sequences.append(
                (r.tokens(r.num_computed, r.num_computed + n), r.num_computed, r.page_table)
            )
            samples = r.num_computed + n == r.num_tokens  # else a prefill chunk: more to come
            sampling.append(self._row_sampling(r) if samples else None)
        forward = ForwardBatch.build(sequences, self.page_size, self.device, sampling)
        forward.layer_ready = self.cache.take_layer_events()
        return ScheduledBatch(plan, forward)

    def continue_decode(self, prev: ScheduledBatch, ids: torch.Tensor) -> ScheduledBatch | None:
        """The decode step after `prev`, planned while `prev` still runs: each of its requests
        computes the token `prev` samples for it, which `ids` (on the device) holds and the host
        has not read yet. None where the next step must be scheduled normally: `prev` is not a
        decode step of every running request, someone could be admitted, a row samples other
        than plainly greedy or is about to reach max_tokens, or a page would need a preemption.

        A request that `prev` ends (EOS, a stop) still computes one token in this step; its
        pages go back when `prev`'s outputs are applied, and this step's row for it is dropped
        (`process_outputs` skips requests no longer running). The GPU runs the steps in order,
        so nothing reuses those pages before this step has written them."""
        if self.waiting and not self._admission_blocked and len(self.running) < self.max_running:
            return None
        if len(prev.plan) != len(self.running) or not prev.forward.sampling:
            return None
        for (r, n), row in zip(prev.plan, prev.forward.sampling, strict=True):
            if (
                n != 1
                or row is None
                or r.state != State.RUNNING
                or not r.output_ids  # prev samples its first token: its prompt is cached then
                or len(r.output_ids) + 2 > r.params.max_tokens  # prev's token is its last
            ):
                return None
        for r, _ in prev.plan:  # room for the token prev samples, at position num_computed + 1
            need = -(-(r.num_computed + 2) // self.page_size) - len(r.page_table)
            if need > 0:
                try:
                    r.page_table += self.cache.alloc(need)
                except OutOfPages:
                    return None  # the pages taken so far stay in their tables, used next step
        self.steps += 1
        self.continued_steps += 1
        plan = [(r, 1) for r, _ in prev.plan]
        sampling = [self._row_sampling(r) for r, _ in plan]
        prefix = [r.num_computed + 1 for r, _ in plan]
        forward = ForwardBatch(
            input_ids=ids,
            positions=to_device(np.asarray(prefix, dtype=np.int64), ids.device),
            prefix_lens=prefix,
            extend_lens=[1] * len(plan),
            page_tables=[r.page_table for r, _ in plan],
            page_size=self.page_size,
            sampling=sampling,
        )
        return ScheduledBatch(plan, forward)
