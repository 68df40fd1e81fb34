"""The lazily-invalidated heap always pops the evictable node a brute-force scan would pick."""

import hypothesis.strategies as st
import pytest
from hypothesis import given

from radixkv.cache.eviction.by_name import make_policy
from radixkv.cache.eviction.index import EvictionIndex
from radixkv.cache.eviction.policy import LRUPolicy
from radixkv.cache.tiers import DEVICE
from radixkv.cache.tree import TreeNode


def make_nodes(n):
    root = TreeNode((), None, 0)
    return [TreeNode((i, i), root, 2) for i in range(n)]


ops = st.lists(
    st.tuples(
        st.sampled_from(["touch", "lock", "unlock", "pop", "offload", "onload"]),
        st.integers(0, 9),
        st.integers(0, 100),
    ),
    max_size=200,
)


@given(ops)
def test_pop_order_equals_brute_force(ops_list):
    nodes = make_nodes(10)
    index = EvictionIndex(DEVICE, LRUPolicy())
    for i, n in enumerate(nodes):
        n.device, n.last_access = [i], i
        index.update(n)
    for op, i, t in ops_list:
        n = nodes[i]
        if op == "touch":
            n.last_access = t
        elif op == "lock":
            n.lock_ref += 1
        elif op == "unlock" and n.lock_ref:
            n.lock_ref -= 1
        elif op == "offload":
            n.device = None
        elif op == "onload":
            n.device = [i]
        if op == "pop":
            candidates = [x for x in nodes if x.device is not None and x.lock_ref == 0]
            got = index.pop()
            if not candidates:
                assert got is None
            else:
                assert got is not None and got.last_access == min(x.last_access for x in candidates)
                got.device = None  # evicted
        index.update(n)
        assert index.live == sum(1 for x in nodes if x.device is not None and x.lock_ref == 0)


def test_unknown_policy_names_the_choices():
    with pytest.raises(ValueError, match="lru"):
        make_policy("fifo")


def test_workload_policy_retires_abandoned_tails_before_older_live_leaves():
    from radixkv.cache.eviction.workload import WorkloadAwarePolicy

    policy = WorkloadAwarePolicy()
    root = TreeNode((), None, 0)
    old_live = TreeNode(tuple(range(2048)), root, 2048)  # big, never split: plain LRU
    tail = TreeNode(tuple(range(2048)), root, 2048)
    old_live.last_access, tail.last_access = 100, 150
    tail.diverged = True  # a later request split it and went elsewhere
    policy.now, policy.age = 200, 80.0  # nodes currently live ~80 ticks unused
    assert policy.likely_dead(tail) and not policy.likely_dead(old_live)
    assert policy.priority(tail) < policy.priority(old_live)
    tail.hits = 1  # once reused, it is judged by recency alone
    assert policy.priority(tail) > policy.priority(old_live)
    small = TreeNode((1, 2), root, 2)
    small.last_access = 150
    assert policy.likely_dead(small)
