"""Admission to the remote tier (`radixkv.cache.remote_admission`): after learning that a kind of node
is never read again, its pages stop being written to remote (but for exploration); a node read
again is kept there whatever its kind; a written node unread past the horizon counts as dead;
the learning and the refusals are reported."""

from __future__ import annotations

import pytest

from radixkv import CacheConfig
from radixkv.cache.remote_admission import RemoteAdmission
from radixkv.cache.tree import RadixTree
from tests.conftest import TINY
from tests.test_cache_tiers import PS, make, serve


def _node(tree: RadixTree, tokens: list[int]):
    return tree.add_child(tree.root, tuple(tokens))


def test_a_class_never_read_again_is_refused_once_learned_and_a_read_node_kept():
    tree = RadixTree(PS)
    adm = RemoteAdmission(PS, threshold=0.2, min_samples=8, explore_every=4)
    nodes = [_node(tree, [i] * PS) for i in range(20)]
    for n in nodes:
        adm.note_insert(n)
    assert all(adm.admit_new(n, clock=i) for i, n in enumerate(nodes[:8]))  # explore first
    for n in nodes[:8]:
        adm.on_gone(n)  # written, then left the tree unread
    decisions = [adm.admit_new(n, clock=10) for n in nodes[8:16]]  # 0 of 8 read: below 20%
    assert decisions == [False, False, False, True] * 2  # one refusal in 4 is explored
    nodes[16].hits = 1
    assert adm.admit_leaving(nodes[16], clock=10)  # read again on host: kept whatever its class
    assert not adm.admit_leaving(nodes[17], clock=10)
    for n in (nodes[11], nodes[15]):  # the explored ones are read: 2 of 10 = 20%
        adm.on_read(n, clock=20)
    assert adm.admit_new(nodes[18], clock=21)
    report = adm.as_dict()
    assert (report["admitted"], report["refused"], report["explored"]) == (11, 6, 2)
    (cls,) = report["classes"].values()
    assert (cls["read_again"], cls["known"], cls["pending"]) == (2, 10, 1)


def test_a_written_node_unread_past_the_horizon_counts_as_dead():
    """Outcomes cannot wait for the remote tier to drop a node: a written node unread for
    longer than the class's horizon (twice the 90th percentile of its read gaps) is dead."""
    tree = RadixTree(PS)
    adm = RemoteAdmission(PS, threshold=0.6, min_samples=4, explore_every=1000)
    nodes = [_node(tree, [i] * PS) for i in range(40)]
    for n in nodes:
        adm.note_insert(n)
    for i, n in enumerate(nodes[:10]):  # read back 100 ticks after written: horizon 4,096
        assert adm.admit_new(n, clock=i)
        adm.on_read(n, clock=i + 100)
    for i, n in enumerate(nodes[10:20]):  # written, never read, never dropped
        assert adm.admit_new(n, clock=200 + i)
    assert adm.admit_new(nodes[20], clock=300)  # 10 read of 10 known: the rest still pending
    assert not adm.admit_new(nodes[21], clock=200 + 19 + 4097)  # 10 of 20 known now: < 60%
    (cls,) = adm.as_dict()["classes"].values()
    assert (cls["read_again"], cls["known"], cls["pending"], cls["horizon"]) == (10, 20, 1, 4096)


def test_the_cache_stops_writing_through_prompts_never_read_again(tmp_path):
    """Unique prompts through a host tier too small for them: once 8 written ones have gone
    unread past the horizon, new ones are no longer written to remote (but one refusal in 8,
    explored), while a prefix read again is kept and reads back."""
    cache = make(tmp_path, device=8, host=8, remote_admission=0.25)
    adm = cache.writes.admission
    adm.min_samples, adm.min_horizon = 8, 16  # learn within this short run
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
        report = adm.as_dict()
        assert report["refused"] > 0
        assert cache.controller.moved["host_to_remote"] - writes_before < 2 * 19, report
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
