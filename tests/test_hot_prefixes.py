"""Cross-instance hot prefixes: one cache publishes what its requests read most into the shared
tier; a second process's cache (same namespace) warms its host tier from it; a record of another
namespace or a corrupt one is refused."""

from __future__ import annotations

from radixkv import CacheConfig, CacheNamespace, HiRadixCache
from radixkv.cache.prefetch.hot_prefixes import hot_prefixes, publish, record_key, warm
from storage import FileStore
from tests.conftest import TINY, assert_pages_hold, write_pages

PS = TINY.page_size
NS = CacheNamespace("test-model", TINY)


def make(path, namespace=NS) -> HiRadixCache:
    config = CacheConfig(device_pages=32, host_pages=64, remote_pages=1000, remote_io="inline")
    return HiRadixCache(TINY, config, namespace=namespace, store=FileStore(path))


def serve(cache: HiRadixCache, tokens: list[int]) -> None:
    m = cache.match(tokens)
    cache.lock(m.last_node)
    cache.load(m)
    have = cache.match(tokens, touch=False).device_pages
    new = cache.alloc(len(tokens) // PS - len(have))
    write_pages(cache, tokens, new, first_page=len(have))
    cache.insert(tokens, have + new)
    cache.unlock(m.last_node)
    cache.wait_idle()


SYSTEM = list(range(100, 100 + 6 * PS))  # a shared system prompt: read by every request
USERS = [SYSTEM + [500 + 10 * u + i for i in range(2 * PS)] for u in range(5)]


def test_a_second_process_warms_its_host_tier_with_the_first_ones_hot_prefixes(tmp_path):
    a = make(tmp_path)
    for tokens in USERS:
        serve(a, tokens)
    top = hot_prefixes(a)
    assert top and top[0][0] == SYSTEM and top[0][1] == 4  # the first computed it, four read it
    publish(a)
    a.wait_idle()
    a.close()

    b = make(tmp_path)  # a new process: an empty tree over the same store
    assert b.match(SYSTEM, touch=False).cached_tokens == 0
    w = warm(b)
    b.wait_idle()
    assert w.done and w.error is None and w.prefixes == 1
    m = b.match(SYSTEM, touch=False)
    assert m.host_tokens == len(SYSTEM)  # on host before any request asked
    b.lock(m.last_node)
    b.load(m)
    assert_pages_hold(b, SYSTEM, b.match(SYSTEM, touch=False).device_pages)
    b.unlock(m.last_node)
    serve(b, USERS[0])  # a request reads it: the warm-up was useful
    r = b.prefetcher.report(hit_tokens=len(SYSTEM))
    assert r["by_kind"]["hot"]["moved_pages"] == len(SYSTEM) // PS
    assert r["by_kind"]["hot"]["precision"] == 1.0
    b.check_integrity()
    b.close()


def test_publishing_merges_with_the_record_already_there(tmp_path):
    a = make(tmp_path)
    for tokens in USERS[:3]:
        serve(a, tokens)
    publish(a)
    a.wait_idle()
    other = list(range(900, 900 + 4 * PS))
    c = make(tmp_path)
    for _ in range(3):
        serve(c, other)
    publish(c)
    c.wait_idle()
    b = make(tmp_path)
    w = warm(b)
    b.wait_idle()
    assert w.prefixes == 2  # both processes' hot prefixes
    assert b.match(other, touch=False).host_tokens == len(other)
    for x in (a, b, c):
        x.close()


def test_another_namespace_or_a_corrupt_record_warms_nothing(tmp_path):
    a = make(tmp_path)
    for tokens in USERS:
        serve(a, tokens)
    publish(a)
    a.wait_idle()
    a.close()
    stranger = make(tmp_path, CacheNamespace("another-model", TINY))
    w = warm(stranger)
    stranger.wait_idle()
    assert w.done and w.prefixes == 0  # its record key is its own: nothing found
    stranger.close()
    store = FileStore(tmp_path)
    path = store._path(record_key(make(tmp_path)).hex())
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0xFF
    path.write_bytes(bytes(blob))
    b = make(tmp_path)
    w = warm(b)
    b.wait_idle()
    assert w.done and w.prefixes == 0 and "checksum" in w.error
    assert b.store.stats.corrupt == 1
    b.close()
