"""The tier round trip on CUDA: device pool on the GPU, pinned host pool (skipped without CUDA)."""

import pytest
import torch

from radixkv import DEVICE, HOST, CacheConfig, CacheNamespace, HiRadixCache
from storage import (
    DevicePool,
    FileStore,
    HostPool,
    KVLayout,
    copy_device_to_host,
    copy_host_to_device,
)
from tests.conftest import TINY, assert_pages_hold, write_pages

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


def test_pools_live_where_they_should():
    layout = KVLayout(4, 2, 64, 16, torch.bfloat16)
    device, host = DevicePool(layout, 32), HostPool(layout, 64)
    assert device.data.is_cuda and host.data.is_pinned()
    # flashinfer's paged NHD layout per layer, plus the scratch page padded graph rows write
    assert device.layer(0).shape == (32 + 1, 2, 16, 2, 64)
    assert device.scratch_page == 32 and device.allocator.num_free == 32


def test_scattered_pages_round_trip_bit_exactly_on_cuda():
    layout = KVLayout(4, 2, 64, 16, torch.bfloat16)
    device, host = DevicePool(layout, 256), HostPool(layout, 256)
    device.data.copy_(torch.randn_like(device.data, dtype=torch.float32).to(torch.bfloat16))
    src = torch.randperm(256)[:100].tolist()
    mid = torch.randperm(256)[:100].tolist()
    dst = torch.randperm(256)[:100].tolist()
    copy_device_to_host(device, src, host, mid)
    want = device.data[:, src].clone()
    device.data.zero_()
    copy_host_to_device(host, mid, device, dst)
    torch.cuda.synchronize()
    assert torch.equal(device.data[:, dst], want)


def test_device_host_remote_host_device_on_cuda(tmp_path):
    cache = HiRadixCache(
        TINY,
        CacheConfig(device_pages=8, host_pages=32, remote_pages=1000),
        namespace=CacheNamespace("gpu-test", TINY),
        store=FileStore(tmp_path),
    )
    seq = list(range(100, 116))
    pages = cache.alloc(8)
    write_pages(cache, seq, pages)
    cache.insert(seq, pages)
    cache.wait_idle()
    cache.evict(DEVICE, 8)
    cache.evict(HOST, 32)
    cache.flush()  # forget the tree: only the remote tier has it now
    ticket = cache.prefetch(seq)
    cache.wait_idle()
    assert ticket.fetched_tokens == len(seq)
    m = cache.match(seq)
    cache.lock(m.last_node)
    cache.load(m)
    cache.unlock(m.last_node)
    m = cache.match(seq)
    assert m.device_tokens == len(seq) and cache.device_pool.data.is_cuda
    assert_pages_hold(cache, seq, m.device_pages)
    cache.check_integrity()
    cache.close()


def test_uva_kernel_equals_the_portable_path_both_ways(monkeypatch):
    from storage import uva_copy

    calls = []
    real = uva_copy.copy
    monkeypatch.setattr(
        uva_copy, "copy", lambda *a, **k: (calls.append(k["to_device"]), real(*a, **k))
    )

    layout = KVLayout(3, 2, 64, 16, torch.bfloat16)
    device = DevicePool(layout, 128)
    pinned, plain = HostPool(layout, 96), HostPool(layout, 96, pin_memory=False)
    assert uva_copy.usable(device.data, pinned.data) and not uva_copy.usable(
        device.data, plain.data
    )
    device.data.copy_(torch.randn(device.data.shape, device="cuda").to(torch.bfloat16))
    src, dst = torch.randperm(128)[:80].tolist(), torch.randperm(96)[:80].tolist()
    copy_device_to_host(device, src, pinned, dst)  # kernel
    copy_device_to_host(device, src, plain, dst)  # gather + scatter
    torch.cuda.synchronize()
    assert torch.equal(pinned.data, plain.data)
    back = torch.randperm(128)[:80].tolist()
    expected = device.data[:, src].clone()
    copy_host_to_device(pinned, dst, device, back)
    torch.cuda.synchronize()
    assert torch.equal(device.data[:, back], expected)
    assert calls == [False, True], "the pinned pool must take the kernel path, the plain one not"


def test_both_host_to_device_methods_move_the_same_pages_on_cuda():
    from storage.transfer import (
        H2D_METHODS,
        copy_host_to_device_by_layer,
        fastest_host_to_device,
    )

    layout = KVLayout(4, 2, 64, 16, torch.bfloat16)
    device, host = DevicePool(layout, 256), HostPool(layout, 256)
    method, gbps = fastest_host_to_device(device, host)
    assert method in H2D_METHODS and set(gbps) == set(H2D_METHODS) and min(gbps.values()) > 0
    host.data.copy_(torch.randn_like(host.data, dtype=torch.float32).to(torch.bfloat16))
    src = list(range(40, 90)) + torch.randperm(40)[:30].tolist()  # a run and scattered pages
    dst = torch.randperm(256)[:80].tolist()
    want = host.data[src].transpose(0, 1).cuda()
    stream = torch.cuda.Stream()
    for m in H2D_METHODS:
        device.data.zero_()
        copy_host_to_device(host, src, device, dst, m)
        torch.cuda.synchronize()
        assert torch.equal(device.data[:, dst], want), m
        device.data.zero_()
        events = copy_host_to_device_by_layer(host, src, device, dst, stream, m)
        assert len(events) == layout.num_layers
        torch.cuda.current_stream().wait_event(events[-1])
        torch.cuda.synchronize()
        assert torch.equal(device.data[:, dst], want), m
