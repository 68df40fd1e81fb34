"""The radix tree's walk equals a naive longest-common-prefix over everything inserted."""

import hypothesis.strategies as st
from hypothesis import given, settings

from radixkv.cache.tree import RadixTree

PS = 2


def naive_match(inserted: list[tuple[int, ...]], tokens: tuple[int, ...]) -> int:
    best = 0
    for seq in inserted:
        n = 0
        while n + PS <= min(len(seq), len(tokens)) and seq[n : n + PS] == tokens[n : n + PS]:
            n += PS
        best = max(best, n)
    return best


def insert(tree: RadixTree, tokens: tuple[int, ...]) -> None:
    tokens = tokens[: tree.aligned(len(tokens))]
    path, pos = tree.walk(tokens)
    if pos < len(tokens):
        tree.add_child(path[-1] if path else tree.root, tokens[pos:])


seqs = st.lists(st.integers(0, 2), max_size=14).map(tuple)


@settings(max_examples=300)
@given(st.lists(seqs, max_size=12), st.lists(seqs, max_size=8))
def test_walk_equals_naive_prefix_match(inserts, queries):
    tree = RadixTree(PS)
    done = []
    for s in inserts:
        insert(tree, s)
        done.append(s[: tree.aligned(len(s))])
        for q in queries + done:
            path, n = tree.walk(q)
            assert n == naive_match(done, q)
            assert sum(len(x.key) for x in path) == n
            assert all(len(x.key) % PS == 0 and x.key for x in path)
    # structure: every child is indexed by its first page, depths add up
    for node in tree.nodes():
        assert node.parent.children[node.key[:PS]] is node
        assert node.depth == node.parent.depth + len(node.key)
    assert tree.num_nodes == 1 + sum(1 for _ in tree.nodes())


def test_split_keeps_both_halves_and_references():
    tree = RadixTree(2)
    insert(tree, (1, 2, 3, 4, 5, 6))
    (node,) = tree.root.children.values()
    node.lock_ref, node.device = 2, [10, 11, 12]
    upper = tree.split(node, 2)
    assert upper.key == (1, 2) and node.key == (3, 4, 5, 6)
    assert upper.device == [10] and node.device == [11, 12]
    assert upper.lock_ref == 2 and node.parent is upper and upper.device_children == 1
