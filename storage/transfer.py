"""Copies of scattered pages between the device pool and the host pool.

With CUDA, Triton and a pinned host pool, host -> device has two ways, both queued on the current
stream: one kernel that reads host memory directly (UVA, storage/uva_copy.py), or the copy
engine's DMA of each run of consecutive host pages into a staging buffer and one device-side
scatter (`staged`). Which is faster depends on the card (an H100 measured 30.6 GB/s for the
kernel against 54.6 GB/s for a pinned copy; an H200 50.8 for both): `fastest_host_to_device`
times both at start-up. Device -> host is the kernel's. A CPU reader of host pages must
synchronise first (`host_ready`). Without CUDA: one gather and one scatter.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from storage import uva_copy
from storage.pools import DevicePool, HostPool


def _index(pages: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(pages, dtype=torch.long, device=device)


def _raw(data: torch.Tensor) -> torch.Tensor:
    """A pool's data for moving bytes: float8 as uint8 (torch's CPU index_copy_ has no float8)."""
    return (
        data.view(torch.uint8) if data.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else data
    )


def copy_device_to_host(
    device_pool: DevicePool,
    device_pages: Sequence[int],
    host_pool: HostPool,
    host_pages: Sequence[int],
) -> None:
    """host[host_pages[i]] = device[device_pages[i]] for all layers."""
    if len(device_pages) != len(host_pages):
        raise ValueError(f"{len(device_pages)} device pages vs {len(host_pages)} host pages")
    if not device_pages:
        return
    if uva_copy.usable(device_pool.data, host_pool.data):
        uva_copy.copy(device_pool.data, host_pool.data, device_pages, host_pages, to_device=False)
        return
    src = _raw(device_pool.data).index_select(
        1, _index(device_pages, device_pool.device)
    )  # [L, n, 2, ps, H, D]
    src = src.transpose(0, 1).to(host_pool.device)  # [n, L, 2, ps, H, D]; syncs on GPU
    _raw(host_pool.data).index_copy_(0, _index(host_pages, host_pool.device), src)


H2D_METHODS = ("uva", "staged")
STAGE_PAGES = 128  # pages per staging buffer (256 MiB of llama-3-8b's 2 MiB pages)


def copy_host_to_device(
    host_pool: HostPool,
    host_pages: Sequence[int],
    device_pool: DevicePool,
    device_pages: Sequence[int],
    method: str = "uva",
) -> None:
    """device[device_pages[i]] = host[host_pages[i]] for all layers; `method` (H2D_METHODS)
    where the UVA kernel is usable, else the portable path."""
    if len(device_pages) != len(host_pages):
        raise ValueError(f"{len(host_pages)} host pages vs {len(device_pages)} device pages")
    if method not in H2D_METHODS:
        raise ValueError(f"method must be one of {', '.join(H2D_METHODS)}, got {method!r}")
    if not device_pages:
        return
    if method == "staged":
        copy_host_to_device_staged(host_pool, host_pages, device_pool, device_pages)
        return
    if uva_copy.usable(device_pool.data, host_pool.data):
        uva_copy.copy(device_pool.data, host_pool.data, host_pages, device_pages, to_device=True)
        return
    src = _raw(host_pool.data).index_select(
        0, _index(host_pages, host_pool.device)
    )  # [n, L, 2, ps, H, D]
    src = src.to(device_pool.device, non_blocking=True).transpose(0, 1)  # [L, n, ...]
    _raw(device_pool.data).index_copy_(1, _index(device_pages, device_pool.device), src)


def _runs(pages: Sequence[int]) -> list[tuple[int, int]]:
    """(first page, count) of each run of consecutive pages, in order."""
    out: list[tuple[int, int]] = []
    for p in pages:
        if out and out[-1][0] + out[-1][1] == p:
            out[-1] = (out[-1][0], out[-1][1] + 1)
        else:
            out.append((p, 1))
    return out


def copy_host_to_device_staged(
    host_pool: HostPool,
    host_pages: Sequence[int],
    device_pool: DevicePool,
    device_pages: Sequence[int],
) -> None:
    """device[device_pages[i]] = host[host_pages[i]] by the copy engine: each run of consecutive
    host pages is one copy (asynchronous from pinned memory) into a staging buffer in the host's
    page-major layout [k, L, 2, ps, H, D], then one scatter into the device's [L, pages, ...]."""
    if len(device_pages) != len(host_pages):
        raise ValueError(f"{len(host_pages)} host pages vs {len(device_pages)} device pages")
    dev, src = device_pool.device, _raw(host_pool.data)
    for lo in range(0, len(host_pages), STAGE_PAGES):
        chunk = host_pages[lo : lo + STAGE_PAGES]
        stage = torch.empty((len(chunk), *src.shape[1:]), dtype=src.dtype, device=dev)
        at = 0
        for first, count in _runs(chunk):  # stage[at : at + count] = host[first : first + count]
            stage[at : at + count].copy_(src[first : first + count], non_blocking=True)
            at += count
        dst = _index(device_pages[lo : lo + STAGE_PAGES], dev)
        _raw(device_pool.data).index_copy_(1, dst, stage.transpose(0, 1))


def fastest_host_to_device(
    device_pool: DevicePool, host_pool: HostPool, pages: int = 64, repeats: int = 3
) -> tuple[str, dict[str, float]]:
    """The faster host -> device method on this card and its GB/s by method, timed on pages
    [0, pages) of both pools (scattered on the host side: every other page). It overwrites
    them: call it only while the pools hold nothing. ("uva", {}) where there is no choice."""
    if not uva_copy.usable(device_pool.data, host_pool.data):
        return "uva", {}
    n = min(pages, device_pool.num_pages, host_pool.num_pages // 2)
    if n < 1:
        return "uva", {}
    host_pages, device_pages = list(range(0, 2 * n, 2)), list(range(n))
    stream = torch.cuda.current_stream(device_pool.device)
    gbps = {}
    for method in H2D_METHODS:
        copy_host_to_device(host_pool, host_pages, device_pool, device_pages, method)  # warm-up
        stream.synchronize()  # start-up timing: a sync is what measures it
        t0 = time.perf_counter()
        for _ in range(repeats):
            copy_host_to_device(host_pool, host_pages, device_pool, device_pages, method)
        stream.synchronize()
        gbps[method] = n * repeats * host_pool.layout.page_bytes / (time.perf_counter() - t0) / 1e9
    return max(gbps, key=gbps.__getitem__), gbps


def host_ready(device_pool: DevicePool) -> None:
    """Wait for queued device -> host copies before the CPU reads or rewrites host pages.
    (A synchronisation, unavoidable there: the CPU cannot wait on a stream any other way.)"""
    if device_pool.device.type == "cuda":
        torch.cuda.current_stream(device_pool.device).synchronize()


def copy_host_to_device_by_layer(
    host_pool: HostPool,
    host_pages: Sequence[int],
    device_pool: DevicePool,
    device_pages: Sequence[int],
    stream: torch.cuda.Stream,
    method: str = "uva",
) -> list[torch.cuda.Event] | None:
    """Queue the load on `stream`; returns a CUDA event per layer (layer i's pages are on the
    device once event i fired), or None where only the portable path runs. The UVA kernel goes
    one layer at a time; a staged copy moves whole pages, so every layer's event is its end."""
    if not device_pages or not uva_copy.usable(device_pool.data, host_pool.data):
        return None
    stream.wait_stream(
        torch.cuda.current_stream(device_pool.device)
    )  # slots may be in use until now
    events = []
    with torch.cuda.stream(stream):
        if method == "staged":
            copy_host_to_device_staged(host_pool, host_pages, device_pool, device_pages)
            events.append(torch.cuda.Event())
            events[-1].record(stream)
            return events * device_pool.data.shape[0]
        idx = uva_copy.device_indices(host_pages, device_pages, device_pool.device)
        for layer in range(device_pool.data.shape[0]):
            layers = range(layer, layer + 1)
            uva_copy.copy(
                device_pool.data, host_pool.data, host_pages, device_pages, True, layers, idx
            )
            events.append(torch.cuda.Event())
            events[-1].record(stream)
    return events
