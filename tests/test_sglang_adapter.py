"""radixkv's remote tier as SGLang's HiCache storage backend: batch set / get / exists by page
hash against the file store and a real Redis, verification of what comes back, and (where SGLang
is installed) the class against SGLang's own abstract interface."""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
import torch

from storage.sglang_storage import RadixKVStorage


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
            "module_path": "storage.sglang_storage",
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


def test_each_kv_shard_and_layout_has_its_own_namespace():
    def ns(**fields):
        config = dict(model_name="m", tp_rank=0, tp_size=2, pp_rank=0, pp_size=1) | fields
        return RadixKVStorage.namespace_of(SimpleNamespace(**config), {})

    base = ns()
    distinct = [
        ns(tp_rank=1),
        ns(pp_rank=1, pp_size=2),
        ns(attn_cp_rank=1, attn_cp_size=2),
        ns(dcp_rank=1, dcp_size=2),
        ns(is_page_first_layout=True),
        ns(model_name="other"),
        RadixKVStorage.namespace_of(SimpleNamespace(model_name="m", tp_size=2), {"tenant": "b"}),
    ]
    assert len({base, *distinct}) == 1 + len(distinct)
    assert ns(dp_rank=3) == base  # data-parallel replicas hold the same KV: they share
    assert ns(is_mla_model=True, tp_rank=0) == ns(is_mla_model=True, tp_rank=1)


def test_sglangs_own_factory_builds_and_uses_it(tmp_path):
    """Through SGLang's `dynamic` backend loader, with its real config class (where installed)."""
    factory = pytest.importorskip("sglang.srt.mem_cache.storage.backend_factory")
    hicache = pytest.importorskip("sglang.srt.mem_cache.hicache_storage")
    config = hicache.HiCacheStorageConfig(
        tp_rank=0,
        tp_size=1,
        pp_rank=0,
        pp_size=1,
        attn_cp_rank=0,
        attn_cp_size=1,
        is_mla_model=False,
        enable_storage_metrics=False,
        is_page_first_layout=True,
        model_name="org/model",
        extra_config={
            "backend_name": "radixkv",
            "module_path": "storage.sglang_storage",
            "class_name": "RadixKVStorage",
            "remote_url": (tmp_path / "l3").as_uri(),
        },
    )
    storage = factory.StorageBackendFactory.create_backend("dynamic", config, None)
    try:
        assert isinstance(storage, RadixKVStorage)
        pages = _pages(3)
        keys = [f"{i:064x}" for i in range(3)]
        assert storage.batch_set(keys, pages)
        targets = [torch.empty_like(p) for p in pages]
        storage.batch_get(keys, targets)
        assert all(torch.equal(t, p) for t, p in zip(targets, pages, strict=True))
    finally:
        storage.close()
