"""A request and its derived lengths. Page ownership lives in the cache; a request only holds
its page table (tree pages it matched, locked, then pages it allocated) and its lock."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

import torch

from engine.sampling import SamplingParams
from radixkv.cache.prefix_cache import EMPTY, PrefixHandle


class State(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    rid: int
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    state: State = State.WAITING
    finish_reason: str | None = None  # "stop", "length", "abort"
    # cache bookkeeping (owned by the scheduler; pages by the cache)
    prefix: PrefixHandle = EMPTY  # the cached prefix it holds locked (EMPTY: none)
    page_table: list[int] = field(default_factory=list)
    tree_pages: int = 0  # page_table[:tree_pages] belong to the tree (locked), the rest to us
    prefetch_counted: int = 0  # of its remote fetch's tokens, those counted as remote hits
    num_computed: int = 0  # tokens whose KV is in page_table
    cached_by_tier: dict[str, int] = field(
        default_factory=lambda: {"device": 0, "host": 0, "remote": 0}
    )
    prefetch: object | None = (
        None  # its remote prefix's fetch to host (radixkv.cache.prefetch.remote_reads)
    )
    expectation: object | None = None  # its host prefix's load to device while it waits
    handoff: object | None = None  # engine.handoff.HandoffWait: its pages from a prefill engine
    handoff_fetched: int = 0  # tokens its handoff's earlier looks fetched (remote hits too)
    arrival: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    generator: torch.Generator | None = None
    constraint: object | None = None  # engine.constraint.Constraint of a structured request
    # per output token when params.logprobs is set: (its log probability, [(token, logprob)])
    output_logprobs: list = field(default_factory=list)
    text: str = ""
    session: str | None = None  # a conversation it belongs to (the prefetcher's hint)

    def __post_init__(self) -> None:
        if not self.prompt_ids:
            raise ValueError("empty prompt")
        if self.params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.params.seed)

    @property
    def all_ids(self) -> list[int]:
        """Prompt and output so far (a new list: use `num_tokens` / `tokens` on hot paths)."""
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def tokens(self, start: int, end: int) -> list[int]:
        """all_ids[start:end] without building all_ids (a decode step's one token is an output's)."""
        p = len(self.prompt_ids)
        if start >= p:
            return self.output_ids[start - p : end - p]
        if end <= p:
            return self.prompt_ids[start:end]
        return self.prompt_ids[start:] + self.output_ids[: end - p]

    @property
    def cached_tokens(self) -> int:
        return sum(self.cached_by_tier.values())

    @property
    def is_prefilling(self) -> bool:
        return self.num_computed < len(self.prompt_ids)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.arrival
