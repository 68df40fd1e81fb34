"""Scenarios through the whole cache: tier round trips, faults, isolation, locks, policies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from radixkv import DEVICE, HOST, CacheConfig, CacheNamespace, HiRadixCache
from storage import FileStore, OutOfPages, encode_page
from tests.conftest import TINY, assert_pages_hold, write_pages

PS = TINY.page_size
NS = CacheNamespace("model-a", TINY)


def make(
    tmp_path,
    *,
    device=8,
    host=32,
    remote=True,
    write_policy="write_through",
    ns=NS,
    store=None,
    **kw,
):
    if remote and store is None:
        store = FileStore(tmp_path / "remote")
    config = CacheConfig(
        device_pages=device,
        host_pages=host,
        remote_pages=1000 if remote else 0,
        write_policy=write_policy,
        **kw,
    )
    return HiRadixCache(TINY, config, namespace=ns, store=store)


def serve(cache: HiRadixCache, tokens: list[int], prefetch: bool = True):
    """One request the way a scheduler runs it; returns the match it started from."""
    if prefetch:
        cache.prefetch(tokens)
        cache.wait_idle()
    m = cache.match(tokens)
    cache.lock(m.last_node)
    cache.load(m)
    m2 = cache.match(tokens, touch=False)
    assert_pages_hold(cache, tokens, m2.device_pages)
    new = cache.alloc(len(tokens) // PS - len(m2.device_pages))
    write_pages(cache, tokens, new, first_page=len(m2.device_pages))
    cache.insert(tokens, m2.device_pages + new)
    cache.unlock(m.last_node)
    cache.wait_idle()
    cache.check_integrity()
    return m


SEQ = list(range(100, 116))  # 8 pages


@pytest.mark.parametrize("write_policy", ["write_through", "write_back"])
def test_pages_survive_device_host_remote_host_device_bit_exactly(tmp_path, write_policy):
    cache = make(tmp_path, write_policy=write_policy)
    serve(cache, SEQ)
    cache.evict(DEVICE, 8)  # device -> host (write-back demotes here)
    assert cache.match(SEQ).host_tokens == len(SEQ)
    cache.evict(HOST, 32)  # host -> remote (write-back demotes here)
    cache.wait_idle()
    m = cache.match(SEQ)
    assert (m.device_tokens, m.host_tokens, m.remote_tokens) == (0, 0, len(SEQ))
    ticket = cache.prefetch(SEQ)
    cache.wait_idle()
    assert ticket.done and ticket.fetched_tokens == len(SEQ) and not ticket.missed
    m = cache.match(SEQ)
    assert m.host_tokens == len(SEQ)
    cache.lock(m.last_node)
    assert cache.load(m) == len(SEQ)
    cache.unlock(m.last_node)
    m = cache.match(SEQ)
    assert m.device_tokens == len(SEQ)
    assert_pages_hold(cache, SEQ, m.device_pages)
    assert cache.controller.moved["remote_to_host"] == 8
    cache.check_integrity()
    cache.close()


def test_a_host_node_whose_children_went_remote_can_leave_the_host(tmp_path):
    """A host-only prefix whose child was demoted to the remote tier must still be evictable
    (else the host fills with stuck prefixes and new pages find no room for their backup)."""
    cache = make(tmp_path)
    serve(cache, SEQ[:8])
    serve(cache, SEQ)  # a child node below the first
    cache.evict(DEVICE, 8)
    cache.evict(HOST, 32)
    cache.wait_idle()
    m = cache.match(SEQ, touch=False)
    assert (m.device_tokens, m.host_tokens, m.remote_tokens) == (0, 0, len(SEQ))
    assert cache.check_integrity()["host"]["free"] == 32
    serve(cache, SEQ)  # and back, bit-exact
    cache.close()


def test_a_fresh_cache_discovers_pages_another_process_wrote(tmp_path):
    a = make(tmp_path)
    serve(a, SEQ)
    a.close()
    b = make(tmp_path, device=16)  # same namespace, same directory, empty tree
    ticket = b.prefetch(SEQ + [1, 2])
    b.wait_idle()
    assert ticket.discovered_tokens == len(SEQ) and ticket.fetched_tokens == len(SEQ)
    m = serve(b, SEQ + [1, 2], prefetch=False)
    assert m.host_tokens == len(SEQ)
    b.close()


@pytest.mark.parametrize("salt, model", [("tenant-b", "model-a"), ("", "model-b")])
def test_other_tenants_and_models_cannot_read_each_others_pages(tmp_path, salt, model):
    a = make(tmp_path)
    serve(a, SEQ)
    a.close()
    other = make(tmp_path, ns=CacheNamespace(model, TINY, tenant_salt=salt))
    ticket = other.prefetch(SEQ)
    other.wait_idle()
    assert ticket.discovered_tokens == 0 and other.match(SEQ).cached_tokens == 0
    other.close()


def corrupt(path: Path, kind: str) -> None:
    blob = bytearray(path.read_bytes())
    if kind == "flip":
        blob[len(blob) // 2] ^= 0x04
    elif kind == "truncate":
        blob = blob[: len(blob) - 3]
    else:  # a well-formed page of another namespace under this key
        foreign = CacheNamespace("model-b", TINY).digest
        blob = encode_page(
            bytes(blob[-TINY.page_bytes :]),
            namespace=foreign,
            key=bytes.fromhex(path.name),
            shape=TINY.page_shape,
            dtype=TINY.dtype,
        )
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize("kind", ["flip", "truncate", "foreign"])
def test_corrupt_remote_pages_are_misses_never_served(tmp_path, kind):
    cache = make(tmp_path)
    serve(cache, SEQ)
    keys = [k.hex() for n in cache.tree.nodes() for k in cache.page_keys(n)]
    cache.flush()
    victim = keys[3]  # page 3 of 8: pages 0-2 still good
    corrupt(tmp_path / "remote" / victim[:2] / victim, kind)
    ticket = cache.prefetch(SEQ)
    cache.wait_idle()
    assert ticket.missed and ticket.fetched_tokens == 3 * PS
    assert cache.store.stats.corrupt == 1
    assert not (tmp_path / "remote" / victim[:2] / victim).exists(), "the bad entry stayed"
    m = serve(cache, SEQ, prefetch=False)  # recomputes page 3 onward; serve() checks bytes
    assert m.cached_tokens == 3 * PS
    cache.close()


class GatedStore(FileStore):
    """A file store whose reads wait for the test to open a gate."""

    def __init__(self, root):
        super().__init__(root)
        self.gate: asyncio.Event | None = None

    async def get(self, keys, max_bytes=None):
        if self.gate is None:
            self.gate = asyncio.Event()
        await self.gate.wait()
        return await super().get(keys)


def test_remote_reads_never_block_the_caller(tmp_path):
    store = GatedStore(tmp_path / "remote")
    cache = make(tmp_path, store=store)
    serve(cache, SEQ, prefetch=False)
    cache.flush()
    ticket = cache.prefetch(SEQ)  # returns although the store cannot answer yet
    for _ in range(500):  # apply the discovery; the read it starts then waits at the gate
        cache.poll()
        if store.gate is not None:
            break
        time.sleep(0.01)
    assert not ticket.done
    cache.check_integrity()  # reserved host pages are accounted as in flight
    cache.controller._loop.call_soon_threadsafe(store.gate.set)
    cache.wait_idle()
    assert ticket.done and ticket.fetched_tokens == len(SEQ)
    cache.close()


def test_two_reads_of_one_node_when_the_first_splits_it(tmp_path):
    """Two prefetches in flight over the same remote node; the first to complete splits it at a
    corrupt page. The second must not slice its pages by the node's new length: that would put
    page 0's bytes under page 3's key (serve() checks every byte) and leak host pages."""
    store = GatedStore(tmp_path / "remote")
    cache = make(tmp_path, store=store)
    store.gate = asyncio.Event()
    store.gate.set()
    serve(cache, SEQ)
    keys = [k.hex() for n in cache.tree.nodes() for k in cache.page_keys(n)]
    cache.evict(DEVICE, 8)
    cache.evict(HOST, 32)  # remote only now: one 8-page node the tree knows
    cache.wait_idle()
    assert cache.match(SEQ, touch=False).remote_tokens == len(SEQ)
    corrupt(tmp_path / "remote" / keys[3][:2] / keys[3], "flip")
    store.gate = None  # the next reads wait at a new gate
    first, second = cache.prefetch(SEQ), cache.prefetch(SEQ)
    for _ in range(500):
        if store.gate is not None:
            break
        time.sleep(0.01)
    cache.controller._loop.call_soon_threadsafe(store.gate.set)
    cache.wait_idle()
    assert first.missed or second.missed
    assert first.fetched_tokens + second.fetched_tokens == 3 * PS  # page 0-2, fetched once
    cache.check_integrity()  # no host page lost
    m = serve(cache, SEQ, prefetch=False)  # checks every byte of what it loads
    assert m.host_tokens == 3 * PS
    cache.close()


class HangingStore(FileStore):
    async def get(self, keys, max_bytes=None):
        await asyncio.sleep(3600)


def test_a_hanging_store_times_out_into_a_miss(tmp_path):
    cache = make(tmp_path, store=HangingStore(tmp_path / "remote"), remote_timeout_s=1.0)
    serve(cache, SEQ, prefetch=False)
    assert all(n.remote for n in cache.tree.nodes()), "the write-through did not land"
    cache.flush()
    ticket = cache.prefetch(SEQ)
    cache.wait_idle(timeout_s=5)
    assert ticket.done and ticket.missed and ticket.fetched_tokens == 0
    cache.check_integrity()
    cache.close()


def test_prefetched_pages_are_held_for_their_request_until_released(tmp_path):
    """A burst of prefetches must not evict each other's pages before their requests attach;
    holds are capped at half the host tier, and a released (or never held) fetch is evictable."""
    seqs = [list(range(200 + 16 * i, 208 + 16 * i)) for i in range(6)]  # 4 pages each
    writer = make(tmp_path, device=32)
    for seq in seqs:
        serve(writer, seq)
    writer.close()
    cache = make(tmp_path, device=8, host=16)  # holds capped at 8 pages: two prefixes
    tickets = [cache.prefetch(seqs[i], hold=True) for i in range(3)]
    cache.wait_idle()
    assert all(t.fetched_tokens == 8 for t in tickets)
    held = [i for i, t in enumerate(tickets) if t.held is not None]
    assert len(held) == 2  # whichever finished last is over the cap
    assert cache.reads.held_pages == 8
    for seq in seqs[3:]:  # 12 more pages into a 16-page tier: only unheld pages may go
        cache.prefetch(seq)
        cache.wait_idle()
    assert all(cache.match(seqs[i], touch=False).host_tokens == 8 for i in held)
    assert cache.check_integrity()["host"]["locked"] == 8
    cache.evict(HOST, 16)  # everything it can: the held pages stay
    assert cache.check_integrity()["host"]["free"] == 8
    assert all(cache.match(seqs[i], touch=False).host_tokens == 8 for i in held)
    first, second = held
    cache.release_prefetch(tickets[first])
    cache.release_prefetch(tickets[first])  # idempotent
    assert cache.reads.held_pages == 4
    assert cache.evict(HOST, 16) > 0
    assert cache.match(seqs[first], touch=False).host_tokens == 0  # released: evictable again
    assert cache.match(seqs[second], touch=False).host_tokens == 8
    late = cache.prefetch(seqs[first], hold=True)
    cache.release_prefetch(late)  # its request left before the fetch finished: nothing kept
    cache.wait_idle()
    assert late.held is None
    cache.release_prefetch(tickets[second])
    assert cache.reads.held_pages == 0
    assert cache.check_integrity()["host"]["locked"] == 0
    cache.close()


def test_locked_pages_are_never_evicted(tmp_path):
    cache = make(tmp_path, device=8, remote=False)
    serve(cache, SEQ)
    m = cache.match(SEQ)
    cache.lock(m.last_node)
    with pytest.raises(OutOfPages):
        cache.alloc(1)
    assert cache.check_integrity()["device"]["locked"] == 8
    cache.unlock(m.last_node)
    assert len(cache.alloc(8)) == 8
    assert cache.match(SEQ).host_tokens == len(SEQ)  # evicted from device, kept on host
    cache.check_integrity()


def test_selective_write_through_copies_only_hot_nodes(tmp_path):
    cache = make(
        tmp_path, write_policy="write_through_selective", selective_threshold=2, remote=False
    )
    serve(cache, SEQ)
    assert cache.check_integrity()["host"]["free"] == 32, "a cold node was copied"
    serve(cache, SEQ)
    assert cache.check_integrity()["host"]["free"] == 32
    serve(cache, SEQ)  # the second hit crosses the threshold
    assert cache.check_integrity()["host"]["free"] == 32 - 8


def test_duplicate_pages_of_concurrent_requests_are_freed_once(tmp_path):
    cache = make(tmp_path, device=16, remote=False)
    a, b = cache.alloc(8), cache.alloc(8)
    write_pages(cache, SEQ, a)
    write_pages(cache, SEQ, b)
    cache.insert(SEQ, a)
    cache.insert(SEQ, b)  # b computed the same prefix: its pages are duplicates
    assert cache.counters.duplicate_pages == 8
    assert cache.check_integrity()["device"]["free"] == 8


@pytest.mark.parametrize(
    "kwargs",
    [
        {"device_pages": 0},
        {"device_pages": 4, "host_pages": -1},
        {"device_pages": 4, "write_policy": "sometimes"},
        {"device_pages": 4, "policy": "fifo"},
        {"device_pages": 4, "selective_threshold": 0},
        {"device_pages": 4, "remote_timeout_s": 0},
        {"device_pages": 4, "remote_load_margin": -1},
        {"device_pages": 4, "remote_load_margin": float("nan")},
        {"device_pages": True},
        {"device_pages": 4, "remote_write_backlog_pages": 0},
        {"device_pages": 4, "remote_write_backlog_pages": 2.5},
    ],
)
def test_bad_config_is_a_clear_value_error(kwargs):
    with pytest.raises(ValueError):
        CacheConfig(**kwargs)


def test_remote_budget_without_store_is_rejected():
    with pytest.raises(ValueError, match="remote store"):
        HiRadixCache(TINY, CacheConfig(device_pages=4, remote_pages=4))


def test_inline_remote_io_runs_only_when_the_owner_waits(tmp_path):
    """remote_io="inline": a remote call runs on the owner's thread, oldest first, at a wait;
    never behind its back (what makes the state machine deterministic)."""
    config = CacheConfig(device_pages=8, host_pages=16, remote_pages=64, remote_io="inline")
    store = FileStore(tmp_path)
    with HiRadixCache(TINY, config, namespace=CacheNamespace("m", TINY), store=store) as cache:
        tokens = list(range(4 * TINY.page_size))
        pages = cache.alloc(4)
        write_pages(cache, tokens, pages)
        cache.insert(tokens, pages)  # write-through: device -> host now, host -> remote queued
        assert cache.controller.inflight == 1
        assert not list(tmp_path.glob("??/*")), "an inline write ran before anyone waited"
        assert cache.poll() == 0  # polling never runs a queued call
        cache.wait_one()
        assert cache.controller.inflight == 0
        assert len(list(tmp_path.glob("??/*"))) == 4
        assert cache.match(tokens, touch=False).last_node.remote
        cache.check_integrity()
    with pytest.raises(ValueError, match="remote_io"):
        CacheConfig(device_pages=8, remote_io="later")
