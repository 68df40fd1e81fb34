"""The prefetcher: queued requests' prefixes promoted within budgets and held, sessions promoted
ahead of their learned return, and its accounting (useful, wasted, precision)."""

from __future__ import annotations

import pytest

from radixkv import CacheConfig, CacheNamespace, HiRadixCache
from radixkv.cache.config import PrefetchConfig
from radixkv.cache.tiers import DEVICE, HOST
from storage import FileStore
from tests.conftest import TINY, assert_pages_hold, write_pages

PS = TINY.page_size


def make_cache(device=16, host=64, store=None, **prefetch) -> HiRadixCache:
    config = CacheConfig(
        device_pages=device,
        host_pages=host,
        remote_pages=1000 if store else 0,
        remote_io="inline",
        prefetch=PrefetchConfig(**prefetch),
    )
    return HiRadixCache(TINY, config, namespace=CacheNamespace("t", TINY), store=store)


def cache_on_host(cache: HiRadixCache, tokens: list[int]) -> None:
    """Insert `tokens` (computed), then push them off the device: they stay on host."""
    pages = cache.alloc(len(tokens) // PS)
    write_pages(cache, tokens, pages)
    cache.insert(tokens, pages)
    cache.wait_idle()
    cache.evict(DEVICE, cache.config.device_pages)
    m = cache.match(tokens, touch=False)
    assert m.device_tokens == 0 and m.host_tokens == len(tokens)


def test_a_queued_request_is_promoted_within_budget_held_and_counted_useful():
    cache = make_cache(device=16, device_share=0.5)
    a = list(range(8 * PS))
    cache_on_host(cache, a)
    pf = cache.prefetcher
    e = pf.expect(a)
    assert pf.step(0.0, device_pages=3) == (3, 0)  # a budget of 3 pages: the node is split at 3
    assert cache.match(a, touch=False).device_tokens == 3 * PS
    cache.evict(DEVICE, 16)  # held for the queued request: nothing of it can go
    assert cache.match(a, touch=False).device_tokens == 3 * PS
    assert pf.step(1.0, device_pages=100) == (5, 0)  # the rest, up to the 8-page share
    m = cache.match(a)  # its turn reads every page: all were worth moving
    assert m.device_tokens == len(a)
    assert_pages_hold(cache, a, m.device_pages)  # the bytes came over intact
    pf.release(e)
    r = pf.report(hit_tokens=len(a))
    assert (r["moved_pages"], r["useful_pages"], r["wasted_pages"]) == (8, 8, 0)
    assert r["precision"] == 1.0 and r["coverage"] == 1.0
    assert pf.held_device_pages == 0
    cache.check_integrity()


def test_the_device_share_caps_what_prefetches_hold():
    cache = make_cache(device=16, device_share=0.25)
    a, b = list(range(8 * PS)), list(range(1000, 1000 + 8 * PS))
    cache_on_host(cache, a)
    cache_on_host(cache, b)
    pf = cache.prefetcher
    ea, eb = pf.expect(a), pf.expect(b)
    assert pf.step(0.0, device_pages=100) == (4, 0)  # 25% of 16 pages, the head of the queue first
    assert cache.match(a, touch=False).device_tokens == 4 * PS
    assert cache.match(b, touch=False).device_tokens == 0
    pf.release(ea)
    assert pf.step(1.0, device_pages=100) == (4, 0)  # its share went to the next in the queue
    assert cache.match(b, touch=False).device_tokens == 4 * PS
    pf.release(eb)
    cache.check_integrity()


def test_a_prefetch_evicted_unread_is_wasted():
    cache = make_cache(device=16, device_share=0.5)
    a = list(range(6 * PS))
    cache_on_host(cache, a)
    pf = cache.prefetcher
    e = pf.expect(a)
    pf.step(0.0, device_pages=100)
    pf.release(e)  # its request left before running
    cache.evict(DEVICE, 16)
    r = pf.report(hit_tokens=0)
    assert (r["moved_pages"], r["useful_pages"], r["wasted_pages"]) == (6, 0, 6)
    assert r["precision"] == 0.0 and r["wasted_bytes"] == 6 * TINY.page_bytes
    cache.check_integrity()


def test_requests_sharing_a_segment_share_one_copy():
    cache = make_cache(device=32, device_share=0.5)
    shared = list(range(6 * PS))
    cache_on_host(cache, shared)
    pf = cache.prefetcher
    e1, e2 = pf.expect(shared + [900, 901]), pf.expect(shared + [902, 903])
    assert pf.step(0.0, device_pages=100) == (6, 0)  # the second found it on device already
    pf.release(e1)
    pf.release(e2)
    cache.check_integrity()


def learn_gaps(pf, n: int, gap: float, start: float = 0.0) -> float:
    """n sessions that each come back `gap` seconds after their turn; returns the time after."""
    t = start
    for i in range(n):
        pf.turn_ended(("learn", i), [1, 2], t)
        pf.turn_began(("learn", i), t + gap)
        t += 1
    return t + gap


def test_a_returning_session_is_promoted_before_its_predicted_return():
    cache = make_cache(
        device=16, device_share=0.5, min_history=4, confidence=0.6, lead_quantile=0.0
    )
    pf = cache.prefetcher
    t = learn_gaps(pf, 8, gap=10.0)
    ctx = list(range(500, 500 + 4 * PS))
    cache_on_host(cache, ctx)
    pf.turn_ended("chat", ctx, t)
    assert pf.step(t + 5, device_pages=100) == (0, 0)  # its return is predicted 10 s on
    assert pf.step(t + 10, device_pages=100) == (4, 0)
    pf.turn_began("chat", t + 11)  # it came back: its pages are read by its turn
    cache.match(ctx)
    assert pf.report(hit_tokens=len(ctx))["by_kind"]["session"]["precision"] == 1.0
    assert pf.held_device_pages == 0
    cache.check_integrity()


def test_clients_that_always_wait_the_same_time_find_their_context_promoted_in_time():
    """Gaps that never vary make every quantile the return itself: the promotion comes `lead_s`
    before it, so the copy has landed when the session is back."""
    cache = make_cache(
        device=16, device_share=0.5, min_history=4, confidence=0.6, lead_quantile=0.05, lead_s=0.5
    )
    pf = cache.prefetcher
    t = learn_gaps(pf, 8, gap=2.0)
    ctx = list(range(500, 500 + 4 * PS))
    cache_on_host(cache, ctx)
    pf.turn_ended("chat", ctx, t)
    assert pf.step(t + 1.4, device_pages=100) == (0, 0)
    assert pf.step(t + 1.5, device_pages=100) == (4, 0)  # 0.5 s before its return at t + 2
    cache.check_integrity()


def test_sessions_that_seldom_return_are_not_prefetched():
    cache = make_cache(device=16, min_history=4, confidence=0.9, lead_quantile=0.0)
    pf = cache.prefetcher
    t = learn_gaps(pf, 4, gap=10.0)
    for i in range(20):  # first turns that never come back: expired at the window's end
        pf.turn_ended(("gone", i), [3, 4], t)
    pf.step(t + 1000, device_pages=0)
    assert pf.return_rate(1) < 0.9 and not pf.confident(1)
    ctx = list(range(700, 700 + 4 * PS))
    cache_on_host(cache, ctx)
    pf.turn_ended("maybe", ctx, t + 1000)
    assert pf.step(t + 1020, device_pages=100) == (0, 0)
    cache.check_integrity()


def test_a_session_on_the_remote_tier_comes_back_to_host(tmp_path):
    cache = make_cache(
        device=8,
        host=8,
        store=FileStore(tmp_path),
        min_history=4,
        confidence=0.6,
        lead_quantile=0.0,
        device_share=0.0,  # host only
    )
    pf = cache.prefetcher
    t = learn_gaps(pf, 8, gap=10.0)
    ctx = list(range(300, 300 + 4 * PS))
    cache_on_host(cache, ctx)
    cache.evict(HOST, 8)  # only the remote tier keeps it now
    assert cache.match(ctx, touch=False).remote_tokens == len(ctx)
    pf.turn_ended("chat", ctx, t)
    assert pf.step(t + 10, device_pages=100, host_pages=3) == (0, 0)  # 4 pages do not fit 3
    assert pf.step(t + 10, device_pages=100, host_pages=4) == (0, 4)
    cache.wait_idle()
    assert cache.match(ctx, touch=False).host_tokens == len(ctx)
    cache.match(ctx)
    r = pf.report(hit_tokens=len(ctx))
    assert r["by_kind"]["session"] == {
        "moved_pages": 4,
        "useful_pages": 4,
        "wasted_pages": 0,
        "precision": 1.0,
    }
    cache.check_integrity()
    cache.close()


@pytest.mark.parametrize(
    "field, value",
    [("device_share", 1.5), ("confidence", -0.1), ("lead_quantile", 0.99), ("history", 0)],
)
def test_prefetch_config_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        PrefetchConfig(**{field: value})


def test_loading_a_prefix_waits_for_the_prefetchers_copies_even_with_nothing_on_host():
    """A prefix the prefetcher already put on the device has no host part left to load, but
    its device copies may still be in flight on the side stream: `PrefixCache.load` must make
    the next forward wait for them all the same (on a GPU, else it reads half-copied pages)."""
    from radixkv.cache.prefix_cache import PrefixCache

    cache = HiRadixCache(TINY, CacheConfig(device_pages=16, host_pages=32), device="cpu")
    joined = []
    cache.join_prefetch_loads = lambda: joined.append(True)
    view = PrefixCache(cache)
    handle = view.match([1, 2, 3, 4, 5])
    assert handle.host_tokens == 0
    view.lock(handle)
    view.load(handle)
    view.unlock(handle)
    assert joined == [True]
