"""Host -> device page copies: the staged copy (runs of host pages, one scatter) moves exactly
what the portable gather does, for any page maps; on CPU pools here, on CUDA in test_gpu_tiers."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from storage import DevicePool, HostPool, KVLayout, transfer
from storage.transfer import copy_host_to_device, copy_host_to_device_staged

LAYOUT = KVLayout(3, 2, 8, 4, torch.float32)


@st.composite
def page_maps(draw):
    """(host pages, device pages): distinct on each side, host runs of consecutive pages likely."""
    n = draw(st.integers(1, 24))
    host = draw(st.permutations(range(32)))[:n]
    if draw(st.booleans()):
        start = draw(st.integers(0, 32 - n))
        host = list(range(start, start + n))  # one run, as a prefix's pages often are
    device = draw(st.permutations(range(32)))[:n]
    return host, device


@settings(max_examples=60, deadline=None)
@given(maps=page_maps(), stage_pages=st.sampled_from([1, 3, 128]))
def test_the_staged_copy_equals_the_gather(maps, stage_pages):
    host_pages, device_pages = maps
    host = HostPool(LAYOUT, 32, pin_memory=False)
    host.data.copy_(torch.randn_like(host.data))
    want, got = DevicePool(LAYOUT, 32, "cpu"), DevicePool(LAYOUT, 32, "cpu")
    copy_host_to_device(host, host_pages, want, device_pages)  # the portable gather
    old, transfer.STAGE_PAGES = transfer.STAGE_PAGES, stage_pages  # several staging buffers too
    try:
        copy_host_to_device_staged(host, host_pages, got, device_pages)
    finally:
        transfer.STAGE_PAGES = old
    assert torch.equal(got.data, want.data)
    assert torch.equal(got.data[:, device_pages], host.data[host_pages].transpose(0, 1))


def test_runs_of_consecutive_pages():
    assert transfer._runs([4, 5, 6, 9, 10, 2, 3, 3]) == [(4, 3), (9, 2), (2, 2), (3, 1)]
    assert transfer._runs([]) == []


def test_bad_method_and_mismatched_pages_are_refused():
    host, device = HostPool(LAYOUT, 4, pin_memory=False), DevicePool(LAYOUT, 4, "cpu")
    with pytest.raises(ValueError, match="method must be one of uva, staged"):
        copy_host_to_device(host, [0], device, [1], method="dma")
    with pytest.raises(ValueError, match="1 host pages vs 2 device pages"):
        copy_host_to_device_staged(host, [0], device, [1, 2])


def test_without_the_kernel_there_is_no_choice_to_time():
    host, device = HostPool(LAYOUT, 8, pin_memory=False), DevicePool(LAYOUT, 8, "cpu")
    assert transfer.fastest_host_to_device(device, host) == ("uva", {})
