"""Copies of scattered pages between the device pool and the host pool.

With CUDA, Triton and a pinned host pool, one kernel moves the pages reading or writing host
memory directly (storage/uva_copy.py); it is queued on the current stream, so a CPU reader of
host pages must synchronise first (`host_ready`). Elsewhere: one gather and one scatter.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from storage import uva_copy
from storage.pools import DevicePool, HostPool


def _index(pages: Sequence[int], device: torch.device) -> torch.Tensor:
    return torch.as_tensor(pages, dtype=torch.long, device=device)


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
    src = device_pool.data.index_select(
        1, _index(device_pages, device_pool.device)
    )  # [L, n, 2, ps, H, D]
    src = src.transpose(0, 1).to(host_pool.device)  # [n, L, 2, ps, H, D]; syncs on GPU
    host_pool.data.index_copy_(0, _index(host_pages, host_pool.device), src)


def copy_host_to_device(
    host_pool: HostPool,
    host_pages: Sequence[int],
    device_pool: DevicePool,
    device_pages: Sequence[int],
) -> None:
    """device[device_pages[i]] = host[host_pages[i]] for all layers."""
    if len(device_pages) != len(host_pages):
        raise ValueError(f"{len(host_pages)} host pages vs {len(device_pages)} device pages")
    if not device_pages:
        return
    if uva_copy.usable(device_pool.data, host_pool.data):
        uva_copy.copy(device_pool.data, host_pool.data, host_pages, device_pages, to_device=True)
        return
    src = host_pool.data.index_select(
        0, _index(host_pages, host_pool.device)
    )  # [n, L, 2, ps, H, D]
    src = src.to(device_pool.device, non_blocking=True).transpose(0, 1)  # [L, n, ...]
    device_pool.data.index_copy_(1, _index(device_pages, device_pool.device), src)


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
) -> list[torch.cuda.Event] | None:
    """Queue the load one layer at a time on `stream`; returns a CUDA event per layer (layer i's
    pages are on the device once event i fired), or None where only the portable path runs."""
    if not device_pages or not uva_copy.usable(device_pool.data, host_pool.data):
        return None
    stream.wait_stream(
        torch.cuda.current_stream(device_pool.device)
    )  # slots may be in use until now
    events = []
    with torch.cuda.stream(stream):
        idx = uva_copy.device_indices(host_pages, device_pages, device_pool.device)
        for layer in range(device_pool.data.shape[0]):
            layers = range(layer, layer + 1)
            uva_copy.copy(
                device_pool.data, host_pool.data, host_pages, device_pages, True, layers, idx
            )
            events.append(torch.cuda.Event())
            events[-1].record(stream)
    return events
