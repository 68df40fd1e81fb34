"""The adaptive policy's parts: ARC's shadow keeps its size rules and its hot set under a scan,
the duel follows whichever shadow hits more, and the tree policy evicts from the right queue."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from radixkv.cache.eviction.adaptive import AdaptivePolicy
from radixkv.cache.eviction.duel import CHUNK_TOKENS, PolicyDuel, ShadowARC, ShadowLRU, chunk_ids


@settings(max_examples=60, deadline=None)
@given(c=st.integers(1, 12), keys=st.lists(st.integers(0, 30), max_size=300))
def test_arc_shadow_keeps_its_size_rules(c, keys):
    arc, resident = ShadowARC(c), set()
    for k in keys:
        hit = arc.access(k)
        assert hit == (k in resident)  # a hit is exactly a resident key
        resident = set(arc.t1) | set(arc.t2)
        assert k in arc.t2 or k in arc.t1  # the key just read is resident
        assert len(arc.t1) + len(arc.t2) <= c
        assert len(arc.t1) + len(arc.b1) <= c
        assert len(arc.t1) + len(arc.t2) + len(arc.b1) + len(arc.b2) <= 2 * c
        assert not (set(arc.t1) | set(arc.t2)) & (set(arc.b1) | set(arc.b2))
        assert 0 <= arc.p <= c


def _hot_and_scan(n: int, seed: int = 0) -> list[int]:
    """A hot set of 20 keys read again and again among a one-pass scan of fresh keys."""
    rng, fresh = random.Random(seed), iter(range(1000, 10**6))
    return [rng.randrange(20) if rng.random() < 0.3 else next(fresh) for _ in range(n)]


def test_arc_keeps_a_hot_set_through_a_scan_where_lru_loses_it():
    keys = _hot_and_scan(20_000)
    lru, arc = ShadowLRU(40), ShadowARC(40)
    lru_hits = sum(lru.access(k) for k in keys)
    arc_hits = sum(arc.access(k) for k in keys)
    assert arc_hits > 1.3 * lru_hits


def test_the_duel_follows_the_shadow_that_hits_more():
    scan = PolicyDuel(40 * CHUNK_TOKENS, half_life=50)
    for k in _hot_and_scan(5_000):
        scan.observe([k])
    assert scan.adaptive  # ARC's shadow won
    # the rule itself: the decayed hits of each shadow, whichever is ahead is followed
    duel = PolicyDuel(40 * CHUNK_TOKENS, half_life=50)
    duel.arc = ShadowLRU(2)  # an ARC shadow too small to hit: LRU's wins
    reference, want = ShadowLRU(40), 0.0
    for k in _hot_and_scan(2_000, seed=2):
        duel.observe([k])
        want = want * 0.5 ** (1 / 50) + reference.access(k)
    assert abs(duel.score[0] - want) < 1e-6 * max(1.0, want)
    assert duel.score[0] > duel.score[1] and not duel.adaptive


def test_chunk_ids_chain_prefixes():
    a = list(range(3 * CHUNK_TOKENS + 5))
    b = a[:CHUNK_TOKENS] + [7] * (2 * CHUNK_TOKENS)
    ia, ib = chunk_ids(a), chunk_ids(b)
    assert len(ia) == 3 and len(ib) == 3
    assert ia[0] == ib[0] and ia[1] != ib[1]
    assert chunk_ids(a[CHUNK_TOKENS:])[0] != ia[1]  # the same chunk after another prefix


def test_adaptive_policy_takes_from_the_recent_queues_past_their_target():
    """Queues: 0 recent and likely dead, 1 recent, 2 frequent; `heads` are last accesses. The
    target `p` is a share of the tier (here 10%), held against the evictable tokens' share."""
    policy = AdaptivePolicy(dueling=False)
    policy.configure(1000)
    policy.p = 100
    assert policy.pick([50, 100, 500], [3, 2, 1]) == 1  # recent 23% > 10%: its older head
    assert policy.pick([50, 100, 500], [2, 3, 1]) == 0
    assert policy.pick([30, 30, 600], [3, 2, 1]) == 2  # recent 9%: the frequent queue
    assert policy.pick([0, 0, 500], [None, None, 1]) == 2
    assert policy.pick([10, 0, 0], [1, None, None]) == 0
    assert policy.pick([0, 10, 0], [None, 1, None]) == 1


def test_adaptive_policy_holds_its_target_against_the_evictable_share():
    """Only leaves are evictable: a tier of chunk chains has few evictable tokens. 30 recent
    tokens of 200 evictable are 15%, above a 10% target, though far below its 100 tokens."""
    policy = AdaptivePolicy(dueling=False)
    policy.configure(1000)
    policy.p = 100
    assert policy.pick([0, 30, 170], [None, 2, 1]) == 1
    assert policy.pick([0, 15, 185], [None, 2, 1]) == 2  # 7.5%


def test_adaptive_policy_counts_a_likely_dead_recent_head_older():
    """Within the recent queues the workload rule holds in ARC's mode too."""
    policy = AdaptivePolicy(dueling=False)
    policy.configure(1000)
    assert policy.pick([50, 50, 0], [5, 2, None]) == 1  # no eviction age yet: plain LRU
    policy.workload.age = 10.0
    assert policy.pick([50, 50, 0], [5, 2, None]) == 0  # 5 - 10 is older than 2
    assert policy.pick([50, 50, 0], [13, 2, None]) == 1


def test_adaptive_policy_in_lru_mode_counts_a_likely_dead_head_older():
    """When LRU's shadow leads, the oldest head of the three queues goes, the likely-dead
    queue's head counted older by the tier's eviction age (the workload rule)."""
    lru_mode = AdaptivePolicy()
    lru_mode.configure(1000)
    lru_mode.duel.score = [5.0, 1.0]  # LRU's shadow ahead
    assert lru_mode.pick([150, 50, 500], [3, 2, 1]) == 2  # no eviction age yet: plain LRU
    assert lru_mode.pick([150, 50, 500], [1, 2, 3]) == 0
    lru_mode.workload.age = 10.0  # evicted nodes had gone unused 10 ticks on average
    assert lru_mode.pick([150, 50, 500], [8, 2, 1]) == 0  # 8 - 10 is older than 1
    assert lru_mode.pick([150, 50, 500], [12, 2, 1]) == 2
    assert lru_mode.pick([0, 50, 500], [None, 2, 1]) == 2
    lru_mode.duel.score = [1.005, 1.0]  # LRU ahead by less than WORKLOAD_LEAD: plain LRU
    assert lru_mode.pick([150, 50, 500], [8, 2, 1]) == 2


def test_a_sampled_duel_sees_one_chunk_in_n():
    duel = PolicyDuel(64 * CHUNK_TOKENS, sample=4)
    assert duel.lru.capacity == 16
    duel.observe(list(range(40)))  # ids 0, 4, ..., 36 are seen: 10 of them
    assert sorted(duel.lru.items) == list(range(0, 40, 4))
    duel.observe(list(range(40)))
    assert duel.score[0] == 10  # every sampled chunk hit again (the first pass hit none)
