"""Admission to the remote tier (`radixkv.remote_admission`): after learning that a kind of node
is never read again, its pages stop being written to remote; a node read again is kept there
whatever its kind; the learning and the refusals are reported."""

from __future__ import annotations

import pytest

from radixkv import CacheConfig
from radixkv.remote_admission import RemoteAdmission
from radixkv.tree import RadixTree
from tests.conftest import TINY
from tests.test_cache_tiers import PS, make, serve


def _node(tree: RadixTree, tokens: list[int]):
    return tree.add_child(tree.root, tuple(tokens))


def test_a_class_never_read_again_is_refused_once_learned_and_a_read_node_always_admitted():
    tree = RadixTree(PS)
    adm = RemoteAdmission(PS, threshold=0.2, min_samples=8)
    nodes = [_node(tree, [i] * PS) for i in range(20)]
    for n in nodes:
        adm.note_insert(n)
    assert all(adm.admit(n) for n in nodes[:8])  # nothing learned yet: explore
    for n in nodes[:8]:
        adm.observe(n)  # left the host tier unread
    assert not adm.admit(nodes[8])  # 0 of 8 read again: below a 20% share
    nodes[9].hits = 1
    assert adm.admit(nodes[9])  # read again: alive whatever its class
    for n in nodes[10:14]:  # the class turns out to be read again after all (4 of 12 = 33%)
        n.hits = 1
        adm.observe(n)
    assert adm.admit(nodes[15])
    report = adm.as_dict()
    assert report["refused"] == 1 and report["admitted"] == 10
    assert sum(c["seen"] for c in report["classes"].values()) == 12


def test_the_cache_stops_writing_through_prompts_never_read_again(tmp_path):
    """Unique prompts through a host tier too small for them: once 32 have left the host
    unread, new ones are no longer written to remote, but a prefix read again still is (when it
    leaves the host), and reads back from remote."""
    cache = make(tmp_path, device=8, host=8, remote_admission=0.25)
    with cache:
        hot = list(range(900, 900 + 2 * PS))
        serve(cache, hot)
        serve(cache, hot)  # read again: alive
        writes_before = None
        for i in range(80):
            serve(cache, [1000 + 7 * i + j for j in range(2 * PS)])
            if i == 60:
                writes_before = cache.controller.moved["host_to_remote"]
        cache.wait_idle()
        adm = cache.writes.admission.as_dict()
        assert adm["refused"] > 0
        assert cache.controller.moved["host_to_remote"] - writes_before < 2 * 19, adm
        m = cache.match(hot, touch=False)
        assert m.remote_tokens + m.host_tokens + m.device_tokens == len(hot)
        cache.check_integrity()


@pytest.mark.parametrize("bad", [-0.1, 1.5, "x"])
def test_a_share_outside_0_1_is_refused(bad):
    with pytest.raises(ValueError, match="remote_admission"):
        CacheConfig(device_pages=4, remote_admission=bad)


def test_zero_writes_everything_as_before(tmp_path):
    with make(tmp_path, device=8, host=8) as cache:
        assert cache.writes.admission is None
        serve(cache, list(range(100, 100 + 2 * PS)))
        cache.wait_idle()
        assert cache.controller.moved["host_to_remote"] == 2
    assert TINY.page_size == PS
