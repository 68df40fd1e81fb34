"""Choosing between recency and the adaptive split by shadow caches, as set-dueling caches do.

An adaptive recency/frequency split gains where a tier is small against the reuse gaps and loses
where LRU already keeps most reuse (measured on the Mooncake traces: +2.8 points at 2% of the
conversation trace, -1.9 at 20%). `PolicyDuel` decides which one a tier follows from what each
would have hit: two shadow caches of the tier's size that hold only chunk ids (no data), one LRU
and one ARC, both fed every request's prompt as chains of `CHUNK_TOKENS`-token chunks. A hit
counts up to a prompt's first missing chunk, as a prefix cache's would. Their hits decay with a half-life of `half_life` requests (2,000: shorter ones flapped between the two and lost on the synthetic trace); the tier follows ARC while ARC's shadow hits at
least as much as LRU's.

Sampling (`sample=8`: one chunk in eight, shadows an eighth the size) cuts the host work and
chose the same on the traces (conversation 2%: 11.08%, synthetic 5%: 15.55%), but landed a hair
below LRU at conversation 20% (35.08% against 35.09%), so the default watches every chunk.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

CHUNK_TOKENS = 256


def chunk_ids(tokens: Sequence[int]) -> list[int]:
    """One id per whole `CHUNK_TOKENS` chunk, chained: equal ids mean equal prefixes."""
    ids, h = [], 0
    for i in range(0, len(tokens) - CHUNK_TOKENS + 1, CHUNK_TOKENS):
        h = hash((h, tuple(tokens[i : i + CHUNK_TOKENS])))
        ids.append(h)
    return ids


class ShadowLRU:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[int, None] = OrderedDict()

    def access(self, key: int) -> bool:
        if key in self.items:
            self.items.move_to_end(key)
            return True
        self.items[key] = None
        if len(self.items) > self.capacity:
            self.items.popitem(last=False)
        return False


class ShadowARC:
    """Megiddo and Modha's ARC over unit-size items: t1/t2 resident, b1/b2 ghosts."""

    def __init__(self, capacity: int) -> None:
        self.c = capacity
        self.p = 0.0
        self.t1: OrderedDict[int, None] = OrderedDict()
        self.t2: OrderedDict[int, None] = OrderedDict()
        self.b1: OrderedDict[int, None] = OrderedDict()
        self.b2: OrderedDict[int, None] = OrderedDict()

    def _replace(self, in_b2: bool) -> None:
        if self.t1 and (len(self.t1) > self.p or (in_b2 and len(self.t1) == self.p)):
            key, _ = self.t1.popitem(last=False)
            self.b1[key] = None
        elif self.t2:
            key, _ = self.t2.popitem(last=False)
            self.b2[key] = None
        else:
            key, _ = self.t1.popitem(last=False)
            self.b1[key] = None

    def access(self, key: int) -> bool:
        c = self.c
        if key in self.t1 or key in self.t2:
            (self.t1 if key in self.t1 else self.t2).pop(key)
            self.t2[key] = None
            return True
        if key in self.b1:
            self.p = min(c, self.p + max(len(self.b2) / len(self.b1), 1))
            self._replace(False)
            del self.b1[key]
            self.t2[key] = None
            return False
        if key in self.b2:
            self.p = max(0.0, self.p - max(len(self.b1) / len(self.b2), 1))
            self._replace(True)
            del self.b2[key]
            self.t2[key] = None
            return False
        l1 = len(self.t1) + len(self.b1)
        if l1 == c:
            if len(self.t1) < c:
                self.b1.popitem(last=False)
                self._replace(False)
            else:
                self.t1.popitem(last=False)
        elif l1 < c and l1 + len(self.t2) + len(self.b2) >= c:
            if l1 + len(self.t2) + len(self.b2) == 2 * c:
                self.b2.popitem(last=False)
            self._replace(False)
        self.t1[key] = None
        return False


class PolicyDuel:
    """Which of LRU and ARC a tier of `capacity_tokens` should follow, by their shadows."""

    def __init__(
        self,
        capacity_tokens: int,
        half_life: int = 2000,
        sample: int = 1,
    ) -> None:
        """`sample`: the shadows see one chunk id in `sample` (by its hash) and hold as many
        fewer, as set-dueling caches sample sets: `sample` times less host work."""
        if capacity_tokens < 0 or half_life <= 0 or sample < 1:
            raise ValueError("capacity_tokens >= 0, half_life > 0 and sample >= 1 are required")
        self.sample = sample
        chunks = max(1, capacity_tokens // CHUNK_TOKENS // sample)
        self.lru, self.arc = ShadowLRU(chunks), ShadowARC(chunks)
        self.decay = 0.5 ** (1 / half_life)
        self.score = [0.0, 0.0]  # decayed shadow hits: LRU, ARC

    def observe(self, ids: Sequence[int]) -> None:
        """One request's prompt, as `chunk_ids`."""
        hits = [0, 0]
        chained = [True, True]  # a prefix cache hits only up to the first chunk it lacks
        for key in ids:
            if key % self.sample:
                continue
            for i, shadow in enumerate((self.lru, self.arc)):
                chained[i] = shadow.access(key) and chained[i]
                hits[i] += chained[i]
        self.score = [s * self.decay + h for s, h in zip(self.score, hits, strict=True)]

    @property
    def adaptive(self) -> bool:
        """Follow the adaptive split (ARC's shadow hits at least as much as LRU's)?"""
        return self.score[1] >= self.score[0]
