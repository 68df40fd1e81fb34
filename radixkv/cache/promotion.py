"""Promotion: a locked match's host-resident part copied to the device (a host hit loaded).

On GPU the copy runs layer by layer on a side stream (`DataPlane.host_to_device`); with
`overlap`, the next forward waits per layer on the events of `controller.take_layer_events()`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from radixkv.cache.tiers import DEVICE

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner
    from radixkv.cache.tree import TreeNode
    from radixkv.cache.types import MatchResult


def load_host_part(
    cache: PageOwner,
    match: MatchResult,
    *,
    overlap: bool = False,
    defer: bool = False,
    max_pages: int | None = None,
    loaded: list[TreeNode] | None = None,
) -> int:
    """Copy the host-resident part of a match to the device; returns tokens loaded.

    The caller holds a lock on `match.last_node`. Loading stops at the first node not on host
    (a remote part needs `prefetch` first). Afterwards `match(tokens)` sees them on device.
    With `overlap` (the scheduler), the next forward waits layer by layer on the events of
    `controller.take_layer_events()`; with `defer` (a prefetch) nothing waits until
    `controller.join_deferred()`. With `max_pages`, only that many of its first pages are
    loaded (a node is split at the page where it stops); `loaded` receives the nodes filled.
    """
    assert match.last_node.is_root or match.last_node.lock_ref > 0, "load() needs the match locked"
    todo: list[TreeNode] = []
    n = match.last_node
    while n is not match.last_device_node and n.parent is not None:
        todo.append(n)
        n = n.parent
    todo.reverse()
    for i, n in enumerate(todo):
        if n.host is None:
            todo = todo[:i]
            break
    if max_pages is not None:
        kept, room = [], max_pages
        for n in todo:
            if room <= 0:
                break
            if len(n.host) > room:
                n = cache.tree.split(n, room * cache.page_size)  # the upper part: its first pages
            kept.append(n)
            room -= len(n.host)
        todo = kept
    need = sum(len(n.host) for n in todo)
    if need == 0:
        return 0
    cache.make_room(DEVICE, need)
    pages = cache.device_pool.allocator.alloc(need)
    cache.controller.host_to_device(
        [p for n in todo for p in n.host], pages, overlap=overlap, defer=defer
    )
    pos = 0
    for n in todo:
        n.device, pos = pages[pos : pos + len(n.host)], pos + len(n.host)
        cache.residency_changed(n, DEVICE, True)
        n.parent.device_children += 1
        cache.locked_device_pages += len(n.device)  # the caller's lock covers every node here
        cache.refresh(n)
        cache.refresh(n.parent)
    if loaded is not None:
        loaded.extend(todo)
    return need * cache.page_size
