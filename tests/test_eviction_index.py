"""The lazily-invalidated heap always pops the evictable node a brute-force scan would pick."""

import hypothesis.strategies as st
import pytest
from hypothesis import given

from radixkv.eviction import DEVICE, EvictionIndex, LRUPolicy, make_policy
from radixkv.tree import TreeNode


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
