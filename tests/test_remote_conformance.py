"""One conformance suite for every remote tier: the file store, Redis, a three-master Redis Cluster,
Mooncake Store and S3 (SeaweedFS), each a real server on loopback. Batched put / get / exists / delete, overwrite, verification of what
comes back (corrupt, truncated and foreign pages are misses, removed, never served), and two
caches sharing pages through the store."""

from __future__ import annotations

import asyncio
import random

import pytest

from radixkv import CacheConfig, CacheNamespace, HiRadixCache
from storage import encode_page, open_store
from storage.remote import read_pages
from tests.conftest import TINY, assert_pages_hold, write_pages

NS = CacheNamespace("model-a", TINY)


@pytest.fixture(params=["file", "redis", "redis-cluster", "mooncake", "s3"])
def store_url(request, tmp_path):
    if request.param == "file":
        return (tmp_path / "remote").as_uri()
    if request.param == "redis":
        server = request.getfixturevalue("redis_server")
        # every test gets its own key prefix: one server, no cross-talk
        return f"{server.url}?prefix=t{random.getrandbits(48):x}:"
    if request.param == "redis-cluster":  # keys spread over three masters' slots
        return (
            request.getfixturevalue("redis_cluster").url + f"&prefix=t{random.getrandbits(48):x}:"
        )
    if request.param == "s3":  # every test its own prefix in the one bucket
        server = request.getfixturevalue("s3_server")
        return f"s3://{server.bucket}/t{random.getrandbits(48):x}?endpoint={server.endpoint}"
    return request.getfixturevalue("mooncake_master").url


def run(url: str, scenario):
    """Open the store inside one event loop, run `scenario(store)`, close it."""

    async def main():
        store = open_store(url)
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(main())


def _keys(n: int) -> list[str]:
    return [f"{random.getrandbits(128):032x}" for _ in range(n)]


def test_batched_round_trip_and_misses(store_url):
    rng = random.Random(1)
    keys = _keys(40)
    blobs = [rng.randbytes(rng.choice([1, 100, 4096, 300_000])) for _ in keys]
    absent = _keys(3)

    async def scenario(store):
        assert await store.put(list(zip(keys, blobs, strict=True))) == [True] * 40
        assert await store.exists(keys + absent) == [True] * 40 + [False] * 3
        got = await store.get(absent[:1] + keys + absent[1:])
        assert got[0] is None and got[-2:] == [None, None]
        assert [bytes(b) for b in got[1:-2]] == blobs
        assert await store.put([]) == [] and await store.get([]) == []
        assert await store.exists([]) == []
        assert await store.delete(keys[:10]) == 10
        assert await store.exists(keys[:12]) == [False] * 10 + [True] * 2
        assert await store.get(keys[:1]) == [None]

    run(store_url, scenario)


def test_a_bounded_get_reads_no_entry_past_its_bound(store_url):
    """A planted giant costs a size query: `Oversize` (its size), never its bytes."""
    from storage.remote import Oversize

    small, exact, big, absent = _keys(4)

    async def scenario(store):
        await store.put([(small, b"s" * 10), (exact, b"e" * 100), (big, b"b" * (4 << 20))])
        got = await store.get([small, exact, big, absent], max_bytes=100)
        assert [bytes(b) for b in got[:2]] == [b"s" * 10, b"e" * 100]
        assert isinstance(got[2], Oversize) and got[2].size == 4 << 20
        assert got[3] is None

    run(store_url, scenario)


def test_overwrite_replaces_the_value(store_url):
    (key,) = _keys(1)

    async def scenario(store):
        await store.put([(key, b"old" * 100)])
        await store.put([(key, b"new" * 50)])
        assert [bytes(b) for b in await store.get([key])] == [b"new" * 50]

    run(store_url, scenario)


def test_concurrent_batches(store_url):
    batches = [[(k, k.encode() * 1000) for k in _keys(8)] for _ in range(8)]

    async def scenario(store):
        puts = await asyncio.gather(*(store.put(b) for b in batches))
        assert all(all(p) for p in puts)
        gets = await asyncio.gather(*(store.get([k for k, _ in b]) for b in batches))
        for b, got in zip(batches, gets, strict=True):
            assert [bytes(x) for x in got] == [v for _, v in b]

    run(store_url, scenario)


def test_corrupt_truncated_and_foreign_pages_are_never_served(store_url):
    shape, dtype = TINY.page_shape, TINY.dtype
    payload = bytes(range(256)) * (TINY.page_bytes // 256) + bytes(TINY.page_bytes % 256)
    keys = [bytes.fromhex(k[:32]) for k in _keys(4)]
    good = encode_page(payload, namespace=NS.digest, key=keys[0], shape=shape, dtype=dtype)
    flipped = bytearray(
        encode_page(payload, namespace=NS.digest, key=keys[1], shape=shape, dtype=dtype)
    )
    flipped[-5] ^= 0x10
    truncated = encode_page(payload, namespace=NS.digest, key=keys[2], shape=shape, dtype=dtype)
    other = CacheNamespace("model-b", TINY)
    foreign = encode_page(payload, namespace=other.digest, key=keys[3], shape=shape, dtype=dtype)
    blobs = [good, bytes(flipped), truncated[:-7], foreign]

    async def scenario(store):
        await store.put([(k.hex(), b) for k, b in zip(keys, blobs, strict=True)])
        got = await read_pages(store, keys, namespace=NS.digest, shape=shape, dtype=dtype)
        assert bytes(got[0]) == payload and got[1:] == [None, None, None]
        assert store.stats.corrupt == 3
        # the bad entries were removed from the store; the good one stays
        assert await store.exists([k.hex() for k in keys]) == [True, False, False, False]

    run(store_url, scenario)


def test_two_caches_share_pages_through_the_store(store_url):
    """A page written through by one cache is discovered, fetched and verified by another (a
    second engine process: its own tree and pools, the same store and namespace). The writer
    stays up: a Mooncake client's pages live in the memory it contributed."""
    config = CacheConfig(device_pages=16, host_pages=32, remote_pages=1000)
    tokens = list(range(100, 100 + 8 * TINY.page_size))
    writer = HiRadixCache(TINY, config, namespace=NS, remote_url=store_url)
    reader = HiRadixCache(TINY, config, namespace=NS, remote_url=store_url)
    try:
        pages = writer.alloc(8)
        write_pages(writer, tokens, pages)
        writer.insert(tokens, pages)
        writer.wait_idle()
        assert writer.counters.remote_write_failures == 0
        ticket = reader.prefetch(tokens)
        reader.wait_idle()
        assert ticket.done and ticket.discovered_tokens == len(tokens)
        m = reader.match(tokens)
        assert m.host_tokens == len(tokens)
        reader.lock(m.last_node)
        reader.load(m)
        assert_pages_hold(reader, tokens, reader.match(tokens, touch=False).device_pages)
        reader.unlock(m.last_node)
        reader.check_integrity()
    finally:
        reader.close()
        writer.close()


def test_redis_cluster_spreads_pages_over_its_masters(redis_cluster):
    import redis

    keys = _keys(64)
    blobs = [(k, random.randbytes(64)) for k in keys]  # the store itself: any bytes

    async def scenario(store):
        assert all(await store.put(blobs))
        return await store.get(keys)

    got = run(redis_cluster.url + "&prefix=spread:", scenario)
    assert got == [b for _, b in blobs]
    sizes = [redis.Redis(port=n.port).dbsize() for n in redis_cluster.nodes]
    assert all(size > 0 for size in sizes), sizes  # no hash tags: every master holds some
