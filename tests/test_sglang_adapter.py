"""radixkv's remote tier as SGLang's HiCache storage backend: batch set / get / exists by page
hash against the file store and a real Redis, verification of what comes back, and (where SGLang
is installed) the class against SGLang's own abstract interface."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from radixkv.sglang_storage import RadixKVStorage


@pytest.fixture(params=["file", "redis"])
def backend(request, tmp_path):
    if request.param == "file":
        url = (tmp_path / "l3").as_uri()
    else:
        url = request.getfixturevalue("redis_server").url + f"?prefix=sgl-{tmp_path.name}:"
    config = SimpleNamespace(
        model_name="org/model",
        tp_rank=0,
        tp_size=1,
        is_mla_model=False,
        extra_config={
            "backend_name": "radixkv",
            "module_path": "radixkv.sglang_storage",
            "class_name": "RadixKVStorage",
            "remote_url": url,
        },
    )
    storage = RadixKVStorage(config, {})
    yield storage, config
    storage.close()


def _pages(n: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(n)
    return [torch.randn(2, 64, 4, 8, generator=g).to(torch.bfloat16) for _ in range(n)]


def test_batch_set_get_exists(backend):
    storage, _ = backend
    keys = [f"{i:064x}" for i in range(1, 9)]
    pages = _pages(8)
    assert storage.batch_set(keys, pages)
    assert storage.batch_exists(keys) == 8
    assert storage.batch_exists(keys[:3] + ["f" * 64] + keys[3:]) == 3  # a prefix count
    targets = [torch.empty_like(p) for p in pages]
    got = storage.batch_get(keys, targets)
    assert all(g is t for g, t in zip(got, targets, strict=True))
    assert all(torch.equal(t, p) for t, p in zip(targets, pages, strict=True))
    assert storage.get("e" * 64, torch.empty_like(pages[0])) is None
    assert storage.exists(keys[0]) and not storage.exists("e" * 64)


def test_a_wrong_shape_or_other_tenant_reads_as_a_miss(backend):
    storage, config = backend
    (page,) = _pages(1)
    assert storage.set("a" * 64, page)
    assert storage.get("a" * 64, torch.empty(2, 64, 4, 4, dtype=torch.bfloat16)) is None
    assert storage.get_stats()["corrupt"] == 1  # and it was removed
    assert not storage.exists("a" * 64)
    storage.set("b" * 64, page)
    other = RadixKVStorage(config, {"tenant": "team-b"})
    try:
        assert other.batch_exists(["b" * 64]) == 0  # another namespace: other keys entirely
    finally:
        other.close()


def test_implements_sglangs_interface():
    base = pytest.importorskip("sglang.srt.mem_cache.hicache_storage").HiCacheStorage
    assert issubclass(RadixKVStorage, base)
    assert not inspect.isabstract(RadixKVStorage)


def test_needs_a_remote_url():
    with pytest.raises(ValueError, match="remote_url"):
        RadixKVStorage(SimpleNamespace(extra_config={}), {})
