"""Outputs: a step's tokens applied to its requests, stop conditions, and finishing.

A prefill chunk hands its computed full pages to the tree at once (still locked by the request);
a request stops on EOS, stop tokens, stop strings, a finished grammar or max_tokens, and hands
its finished pages to the tree.
"""

from __future__ import annotations

import time

from engine.page_tables import PageTables
from engine.request import Request, State
from engine.sampling import SAMPLE_FAILED, RowSampling
from engine.scheduler_state import (
    PREFILL_SAMPLE_MIN_TOKENS,
    RATIO_ALPHA,
    RATIO_MIN,
    RESERVE_CLIP_TOKENS,
    ScheduledBatch,
)


class Outputs(PageTables):
    """The scheduler's output processing (a part of `engine.scheduler.Scheduler`)."""

    def _row_sampling(self, r: Request) -> RowSampling:
        p = r.params
        banned = ()
        if len(r.output_ids) < p.min_tokens:  # too early to end: EOS and stop tokens banned
            banned = tuple(self.eos_token_ids | set(p.stop_token_ids))
        return RowSampling(p, r.generator, r.constraint, r.output_ids, banned)

    def process_outputs(
        self, batch: ScheduledBatch, tokens: list[int | None], seconds: float
    ) -> list[Request]:
        """Apply a step's tokens; returns the requests that produced a token (or finished).
        `seconds`: the forward's time, for the cache's prefill-speed estimate."""
        progressed = []
        rows = batch.forward.sampling or [None] * len(tokens)
        for (req, n), token, row in zip(batch.plan, tokens, rows, strict=True):
            if req.state != State.RUNNING:
                continue  # ended (or aborted) by the step before: a continued step's extra row
            req.num_computed += n
            if token is None:  # a prefill chunk: more to compute before sampling
                self._cache_prompt(req)  # its full pages: shareable, and adoption continues past
                continue
            if token == SAMPLE_FAILED:  # its sampling raised (logged): it ends alone
                self.running.remove(req)
                self._release(req)
                self._finish(req, "error")
                progressed.append(req)
                continue
            if len(req.output_ids) == 0:
                self._cache_prompt(req)  # requests queued behind it can reuse it right away
                self.cache.release_prefetch(req.prefetch)  # its prompt needs no more pages
            req.output_ids.append(token)
            if row is not None and row.logprob is not None:
                req.output_logprobs.append(row.logprob)
            if req.constraint is not None:
                req.constraint.advance(token)
            if req.first_token_at is None:
                req.first_token_at = time.perf_counter()
            progressed.append(req)
            reason = self._stop_reason(req, token)
            if reason:
                self.running.remove(req)
                self._release(req)
                self._finish(req, reason)
        prefill = sum(n for _, n in batch.plan if n > 1)
        if prefill >= PREFILL_SAMPLE_MIN_TOKENS:  # the runner synced: the time is the forward's
            self.cache.observe_prefill(prefill, seconds)
        if self.check_integrity:
            self.cache.check_integrity()
        return progressed

    def _stop_reason(self, req: Request, token: int) -> str | None:
        p = req.params
        if (token in self.eos_token_ids and not p.ignore_eos) or token in p.stop_token_ids:
            return "stop"
        if req.constraint is not None and req.constraint.finished:
            return "stop"  # the grammar is complete (its EOS, if sampled, was handled above)
        if p.stop and self.detokenize is not None and len(req.output_ids) >= p.min_tokens:
            text = self.detokenize(req.output_ids)
            for s in p.stop:
                cut = text.find(s)
                if cut >= 0:
                    req.text = text[:cut]
                    return "stop"
        if len(req.output_ids) >= p.max_tokens:
            return "length"
        return None

    def _finish(self, req: Request, reason: str) -> None:
        if reason in ("stop", "length"):
            used = min(1.0, len(req.output_ids) / min(req.params.max_tokens, RESERVE_CLIP_TOKENS))
            ratio = (1 - RATIO_ALPHA) * self.new_token_ratio + RATIO_ALPHA * used
            self.new_token_ratio = min(1.0, max(RATIO_MIN, ratio))
            if req.session is not None and self.prefetch_pages:
                self.cache.session_ended(req.session, req.all_ids)  # its next turn resends these
        req.state, req.finish_reason = State.FINISHED, reason
        self._waited.pop(req.rid, None)
        self.cache.release_prefetch(req.prefetch)
        if self.handoffs is not None:
            self.handoffs.end(req)  # aborted while it waited for its pages
        self._drop_expectation(req)
        if self.detokenize is not None and not req.text:
            req.text = self.detokenize(req.output_ids)
        if self.on_finish is not None:
            self.on_finish(req)
