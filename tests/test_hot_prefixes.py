"""Cross-instance hot prefixes: one cache publishes what its requests read most into the shared
tier; a second process's cache (same namespace) warms its host tier from it; a record of another
namespace or a corrupt one is refused."""

from __future__ import annotations

import json
import tracemalloc

import pytest
import torch

from radixkv import CacheConfig, CacheNamespace, HiRadixCache
from radixkv.cache.prefetch.hot_prefixes import hot_prefixes, publish, record_key, warm
from storage import FileStore, encode_page
from storage.page_auth import PageAuth
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


AUTH = PageAuth(b"hot-prefix-test-secret-0123456789")
AUTH_NS = CacheNamespace("test-model", TINY, auth=AUTH)


def plant(tmp_path, payload: bytes, auth: PageAuth | None = AUTH, raw: bytes | None = None):
    """Write a hot-prefix record under the namespace's key: framed around `payload` with
    `auth`'s MAC (an insider's, or a forger's key), or `raw` bytes as they are."""
    key = record_key(make(tmp_path, AUTH_NS))
    blob = raw or encode_page(
        payload,
        namespace=AUTH_NS.digest,
        key=key,
        shape=(len(payload),),
        dtype=torch.uint8,
        auth=auth,
    )
    FileStore(tmp_path).root.joinpath(key.hex()[:2]).mkdir(parents=True, exist_ok=True)
    FileStore(tmp_path).root.joinpath(key.hex()[:2], key.hex()).write_bytes(blob)
    return key


BAD_RECORDS = {
    "no prefixes": (b'{"v": 1}', AUTH, "prefixes must be a list"),
    "a bare number": (b'{"v": 1, "prefixes": [5]}', AUTH, "must be [token ids, reads]"),
    "a token id of 2**64": (
        json.dumps({"v": 1, "prefixes": [[[2**64, 1, 2, 3], 4]]}).encode(),
        AUTH,
        "token ids must be integers",
    ),
    "not JSON": (b"\xff{[", AUTH, "not JSON"),
    "forged": (
        json.dumps({"v": 1, "prefixes": [[SYSTEM, 9]]}).encode(),
        PageAuth(b"the-forger-does-not-have-the-key!"),
        "authentication failed",
    ),
    "unauthenticated": (
        json.dumps({"v": 1, "prefixes": [[SYSTEM, 9]]}).encode(),
        None,
        "unauthenticated page",
    ),
}


@pytest.mark.parametrize("name", BAD_RECORDS)
def test_a_bad_record_is_counted_removed_and_never_raises(tmp_path, name):
    payload, auth, why = BAD_RECORDS[name]
    key = plant(tmp_path, payload, auth)
    b = make(tmp_path, AUTH_NS)
    w = warm(b)
    b.wait_idle()  # applies the read: a bad record must not raise here (the engine thread)
    assert w.done and w.prefixes == 0 and why in w.error
    assert b.store.stats.corrupt == 1
    assert not (FileStore(tmp_path).root / key.hex()[:2] / key.hex()).exists()  # removed
    serve(b, USERS[0])  # and the cache goes on serving
    b.check_integrity()
    b.close()


def test_a_120_mb_record_is_not_read(tmp_path):
    plant(tmp_path, b"", raw=b"{" * (120 << 20))
    b = make(tmp_path, AUTH_NS)
    tracemalloc.start()
    w = warm(b)
    b.wait_idle()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert w.done and w.prefixes == 0 and "over" in w.error
    assert peak < 16 << 20, f"warming allocated {peak / 2**20:.0f} MiB"
    b.close()


def test_a_record_naming_forged_pages_warms_none_of_them(tmp_path):
    """An insider's valid record for SYSTEM, whose pages an attacker planted without the key:
    the prefetch reads them, every MAC fails, nothing reaches the host."""
    plant(tmp_path, json.dumps({"v": 1, "prefixes": [[SYSTEM, 9]]}).encode())
    keys = AUTH_NS.page_keys(None, SYSTEM, len(SYSTEM) // PS)  # keys are public: no secret
    for k in keys:  # pages under the victim's keys, framed for its namespace, tagged wrongly
        blob = encode_page(
            torch.full(TINY.page_shape, 7.0).numpy().tobytes(),
            namespace=AUTH_NS.digest,
            key=k,
            shape=TINY.page_shape,
            dtype=TINY.dtype,
            auth=PageAuth(b"x" * 32),
        )
        FileStore(tmp_path).root.joinpath(k.hex()[:2]).mkdir(parents=True, exist_ok=True)
        FileStore(tmp_path).root.joinpath(k.hex()[:2], k.hex()).write_bytes(blob)
    b = make(tmp_path, AUTH_NS)
    w = warm(b)
    b.wait_idle()
    assert w.prefixes == 1
    assert b.store.stats.corrupt_reasons.get("authentication failed", 0) >= 1  # read, refused
    assert b.match(SYSTEM, touch=False).cached_tokens == 0  # no forged page on any tier
    b.check_integrity()
    b.close()
