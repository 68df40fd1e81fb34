"""Mooncake-format request traces: loading, token synthesis, and the offline facts about them.

A trace line: {"timestamp": ms, "input_length": n, "output_length": m, "hash_ids": [...]}, one
hash id per 512-token block (the last may be partial). Token contents are not published, so a
replay synthesises them: token j of block h is h * 512 + j. Equal ids give equal blocks and
distinct ids distinct ones, which preserves the prefix structure exactly, and a token tells
which block and offset it came from (what the offline next-use policy needs).
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

BLOCK = 512


@dataclass(frozen=True)
class TraceRequest:
    timestamp_ms: int
    input_length: int
    output_length: int
    hash_ids: tuple[int, ...]

    def tokens(self) -> tuple[int, ...]:
        out: list[int] = []
        for i, h in enumerate(self.hash_ids):
            n = min(BLOCK, self.input_length - i * BLOCK)
            out.extend(range(h * BLOCK, h * BLOCK + n))
        return tuple(out)

    def block_lengths(self) -> list[int]:
        return [min(BLOCK, self.input_length - i * BLOCK) for i in range(len(self.hash_ids))]


def load_trace(path: str | Path, limit: int | None = None) -> list[TraceRequest]:
    """Read a trace; raises ValueError naming the line of any malformed record."""
    out = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                req = TraceRequest(
                    int(r.get("timestamp", 0)),
                    int(r["input_length"]),
                    int(r.get("output_length", 0)),
                    tuple(int(h) for h in r["hash_ids"]),
                )
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{lineno}: not a Mooncake trace record ({err})") from None
            if req.input_length <= 0 or len(req.hash_ids) != math.ceil(req.input_length / BLOCK):
                raise ValueError(
                    f"{path}:{lineno}: {len(req.hash_ids)} hash ids do not cover {req.input_length} tokens"
                )
            out.append(req)
            if limit is not None and len(out) >= limit:
                break
    if not out:
        raise ValueError(f"{path}: no requests")
    return out


def sample_conversations(requests: list[TraceRequest], one_in: int) -> list[TraceRequest]:
    """The requests of one conversation in `one_in` (what one engine behind a session-sticky
    router of `one_in` engines sees): a conversation is named by its first block that fewer
    than half of the trace's requests share (blocks before it are a common system prompt), and
    kept when that id's hash falls in the chosen share. Keeps the trace's reuse, cuts its load."""
    if one_in < 1:
        raise ValueError(f"--sample-conversations must be >= 1, got {one_in}")
    if one_in == 1:
        return requests
    users: dict[int, int] = {}
    for r in requests:
        for h in set(r.hash_ids):
            users[h] = users.get(h, 0) + 1
    common = len(requests) / 2

    def name(r: TraceRequest) -> int:
        return next((h for h in r.hash_ids if users[h] < common), r.hash_ids[-1])

    # Knuth's multiplicative hash spreads consecutive ids over the shares
    kept = [r for r in requests if (name(r) * 2654435761) % 2**32 % one_in == 0]
    if not kept:
        raise ValueError(f"no conversation of {len(requests):,} requests is in 1 of {one_in}")
    return kept


def unique_tokens(requests: list[TraceRequest]) -> int:
    """Tokens a cache must hold to never evict: per block id, the most of it any request used."""
    longest: dict[int, int] = {}
    for r in requests:
        for h, n in zip(r.hash_ids, r.block_lengths(), strict=True):
            if n > longest.get(h, 0):
                longest[h] = n
    return sum(longest.values())


def ceiling_hit_tokens(requests: list[TraceRequest], page_size: int) -> int:
    """Tokens hit by a cache that never evicts: leading whole pages some earlier request held."""
    seen: set[tuple[int, int]] = set()
    hit = 0
    for r in requests:
        pages = [
            (h, p)
            for h, n in zip(r.hash_ids, r.block_lengths(), strict=True)
            for p in range(n // page_size)
        ]
        full = r.input_length // page_size  # only pages wholly inside the input count
        k = 0
        while k < full and pages[k] in seen:
            k += 1
        hit += k * page_size
        seen.update(pages[:full])
    return hit


class NextUseOracle:
    """When will a page (block h, token offset o) next be read? For Belady's offline policy."""

    def __init__(self, requests: list[TraceRequest]) -> None:
        self.now = 0
        self._uses: dict[
            int, tuple[list[int], list[int]]
        ] = {}  # block -> (request idxs, tokens used)
        for i, r in enumerate(requests):
            for h, n in zip(r.hash_ids, r.block_lengths(), strict=True):
                idxs, lens = self._uses.setdefault(h, ([], []))
                idxs.append(i)
                lens.append(n)

    def next_use(self, first_token: int) -> float:
        """Index of the next request after `now` that reads the page starting at `first_token`."""
        block, offset = divmod(first_token, BLOCK)
        idxs, lens = self._uses.get(block, ((), ()))
        i = bisect.bisect_right(idxs, self.now)
        while i < len(idxs):
            if lens[i] > offset:
                return idxs[i]
            i += 1
        return math.inf
