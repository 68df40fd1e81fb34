"""The file store: batch conformance, atomic writes, the size cap, several processes, verified reads."""

import asyncio
import multiprocessing as mp
import os

import pytest
import torch

from storage import FileStore, KVLayout, decode_page, encode_page, open_store
from storage.remote import read_pages

LAYOUT = KVLayout(1, 1, 8, 4, torch.float32)
NS = b"n" * 16


def blob(i: int, size: int = 64) -> bytes:
    return bytes([i % 256]) * size


def run(coro):
    return asyncio.run(coro)


def test_batch_put_get_exists_delete(tmp_path):
    store = FileStore(tmp_path)
    keys = [f"{i:032x}" for i in range(5)]
    assert run(store.put([(k, blob(i)) for i, k in enumerate(keys)])) == [True] * 5
    assert run(store.exists(keys + ["ff" * 16])) == [True] * 5 + [False]
    assert run(store.get(keys[:2] + ["ff" * 16])) == [blob(0), blob(1), None]
    assert run(store.delete(keys[:2] + ["ff" * 16])) == 2
    assert run(store.exists(keys[:3])) == [False, False, True]
    assert store.usage_bytes() == 3 * 64


def test_an_entry_removed_just_after_its_read_is_still_one_answer(tmp_path, monkeypatch):
    """Another reader may delete a (corrupt) entry between our read and our recency update: the
    batch must still give exactly one answer per key, in order."""
    store = FileStore(tmp_path)
    keys = [f"{i:032x}" for i in range(3)]
    run(store.put([(k, blob(i)) for i, k in enumerate(keys)]))
    utime = os.utime

    def racing_utime(path, *args, **kwargs):
        if str(path).endswith(keys[1]):
            os.remove(path)  # the other reader got there first
        return utime(path, *args, **kwargs)

    monkeypatch.setattr("storage.file_store.os.utime", racing_utime)
    assert run(store.get(keys)) == [blob(0), blob(1), blob(2)]
    assert run(store.get(keys)) == [blob(0), None, blob(2)]


def test_overwrite_replaces_whole_entry_and_accounts_once(tmp_path):
    store = FileStore(tmp_path)
    run(store.put([("ab" * 16, blob(1, 100))]))
    run(store.put([("ab" * 16, blob(2, 40))]))
    assert run(store.get(["ab" * 16])) == [blob(2, 40)]
    assert store.usage_bytes() == 40
    assert not [p for p in tmp_path.rglob(".tmp*")], "temporary files left behind"


def test_size_cap_evicts_least_recently_used(tmp_path):
    store = FileStore(tmp_path, capacity_bytes=1000, low_watermark=0.5)
    keys = [f"{i:032x}" for i in range(10)]
    for i, k in enumerate(keys):  # 10 x 100 bytes fills the cap exactly
        run(store.put([(k, blob(i, 100))]))
        os.utime(store._path(k), (1000 + i, 1000 + i))  # distinct, ordered ages
    run(store.get([keys[0]]))  # reading refreshes the oldest entry
    run(store.put([("ee" * 16, blob(99, 100))]))  # over the cap: sweep to 500 bytes
    present = run(store.exists(keys))
    assert present[0], "a recently read entry was evicted"
    assert sum(present) + 1 <= 5 and not any(present[1:6])
    assert store.usage_bytes() <= 500 and store.stats.evicted >= 6


def _writer(root: str, worker: int, n: int) -> None:
    store = FileStore(root, capacity_bytes=64 * 1024)
    for i in range(n):
        key = f"{worker:02x}{i:030x}"
        payload = torch.full((4 * 8 * 2,), float(i)).numpy().tobytes()
        page = encode_page(
            payload,
            namespace=NS,
            key=bytes.fromhex(key),
            shape=(1, 2, 4, 1, 8),
            dtype=torch.float32,
        )
        asyncio.run(store.put([(key, page)]))


def test_several_processes_share_one_directory(tmp_path):
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    store = FileStore(tmp_path, capacity_bytes=64 * 1024)
    entries = store._entries()
    on_disk = sum(size for _, size, _ in entries)
    assert on_disk <= 64 * 1024, "the shared cap was exceeded"
    assert store.usage_bytes() == on_disk, "shared usage counter disagrees with the directory"
    assert not list(tmp_path.rglob(".tmp*"))
    for _, _, path in entries:  # every surviving entry is whole and verifies
        decode_page(
            path.read_bytes(),
            namespace=NS,
            key=bytes.fromhex(path.name),
            shape=(1, 2, 4, 1, 8),
            dtype=torch.float32,
        )


def test_read_pages_rejects_counts_and_removes_corrupt_entries(tmp_path):
    store = FileStore(tmp_path)
    keys = [bytes([i]) * 16 for i in range(3)]
    payload = torch.arange(LAYOUT.page_numel, dtype=torch.float32).numpy().tobytes()
    pages = [
        encode_page(payload, namespace=NS, key=k, shape=LAYOUT.page_shape, dtype=LAYOUT.dtype)
        for k in keys
    ]
    pages[1] = pages[1][:-1] + bytes([pages[1][-1] ^ 0x10])
    run(store.put([(k.hex(), p) for k, p in zip(keys, pages, strict=True)]))
    got = run(
        read_pages(
            store, keys + [b"\x09" * 16], namespace=NS, shape=LAYOUT.page_shape, dtype=LAYOUT.dtype
        )
    )
    assert (
        bytes(got[0]) == payload and got[1] is None and bytes(got[2]) == payload and got[3] is None
    )
    assert store.stats.corrupt == 1 and store.stats.corrupt_reasons == {"checksum mismatch": 1}
    assert store.stats.misses == 1 and store.stats.hits == 2
    assert run(store.exists([keys[1].hex()])) == [False], "a corrupt entry stayed in the store"


def test_open_store_urls(tmp_path):
    assert isinstance(open_store(f"file://{tmp_path}"), FileStore)
    with pytest.raises(ValueError, match="absolute"):
        open_store("file://relative/dir")
    with pytest.raises(ValueError, match="unsupported"):
        open_store("ftp://x")
    with pytest.raises(ValueError):
        FileStore(tmp_path, capacity_bytes=0)
    with pytest.raises(ValueError, match="hex"):
        FileStore(tmp_path)._path("../etc/passwd")
