"""Cross-instance hot prefixes: the prefixes one process's requests read most, kept in the shared
remote tier so that another process (a new pod, a restart) warms its host tier from them.

The record lives under one key derived from the namespace, so only processes with the same
model, KV layout and tenant share it. It is framed like a page (`storage.codec`: namespace,
key, CRC; a blob failing any check is ignored and counted corrupt) around a JSON payload: at
most `MAX_PREFIXES` token sequences with their read counts. Nothing is unpickled. Publishing
reads the record, merges its own counts in (decayed by half, so old favourites fade) and writes
it back; two processes publishing at once may lose one update (the record is a hint).

Warming reads the record and sends each prefix, hottest first, through
`RemoteReads.prefetch(discover=True)`: the store is asked which of its pages exist, and those
are read into host, marked as prefetched (kind `hot`) so that precision counts them; at most
half the host tier is filled this way.

Choosing what to publish walks the tree once (all nodes): it runs when the engine publishes
(every minute and at shutdown), never on a request's path.

The record holds token ids, a readable form of the prefixes' text, where page keys hold only
digests: an engine shares it only when asked (`EngineConfig.share_hot_prefixes`), for a tier
whose readers (the same model and `--tenant`) may see those prompts.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from radixkv.cache.namespace import key_digest
from radixkv.cache.prefetch.prefetcher import HOT
from storage.codec import PageFormatError, decode_page, encode_page

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner

log = logging.getLogger(__name__)

MAX_PREFIXES = 64
MAX_PREFIX_TOKENS = 65_536
MIN_HITS = 2  # a prefix read by one request only is not hot


def record_key(cache: PageOwner) -> bytes:
    return key_digest(cache.namespace.digest, b"radixkv-hot-prefixes-v1")


def hot_prefixes(cache: PageOwner, limit: int = MAX_PREFIXES) -> list[tuple[list[int], int]]:
    """(tokens, reads) of the tree's hottest prefixes, hottest first: the deepest node of each
    run that `MIN_HITS` or more requests read, scored by reads times length (a full walk)."""
    found: list[tuple[int, int, object]] = []
    stack = list(cache.tree.root.children.values())
    while stack:
        node = stack.pop()
        if node.hits < MIN_HITS or not (node.remote or node.host is not None or node.device):
            continue
        hot_children = [c for c in node.children.values() if c.hits >= MIN_HITS]
        if not hot_children and node.depth <= MAX_PREFIX_TOKENS:
            found.append((node.hits * node.depth, node.hits, node))
        stack.extend(hot_children)
    found.sort(key=lambda x: -x[0])
    out = []
    for _, hits, node in found[:limit]:
        tokens = [t for n in reversed(list(node.path_to_root())) for t in n.key]
        out.append((tokens, hits))
    return out


def _encode(cache: PageOwner, prefixes: list[tuple[list[int], int]]) -> bytes:
    payload = json.dumps({"v": 1, "prefixes": [[t, h] for t, h in prefixes]}).encode()
    return encode_page(
        payload,
        namespace=cache.namespace.digest,
        key=record_key(cache),
        shape=(len(payload),),
        dtype=torch.uint8,
    )


def _decode(cache: PageOwner, blob: bytes | None) -> list[tuple[list[int], int]]:
    """The record's prefixes; [] when absent; raises PageFormatError / ValueError if bad."""
    if blob is None:
        return []
    view = memoryview(blob)
    payload = decode_page(
        blob,
        namespace=cache.namespace.digest,
        key=record_key(cache),
        shape=(_payload_len(view),),
        dtype=torch.uint8,
    )
    data = json.loads(bytes(payload))
    if not isinstance(data, dict) or data.get("v") != 1 or not isinstance(data["prefixes"], list):
        raise ValueError("not a hot-prefix record")
    out = []
    for item in data["prefixes"][:MAX_PREFIXES]:
        tokens, hits = item
        if not (isinstance(tokens, list) and all(isinstance(t, int) and t >= 0 for t in tokens)):
            raise ValueError("a hot prefix must be a list of token ids")
        if not isinstance(hits, (int, float)) or hits < 0:
            raise ValueError("a hot prefix's reads must be a number >= 0")
        out.append((tokens[:MAX_PREFIX_TOKENS], hits))
    return out


def _payload_len(view: memoryview) -> int:
    """The payload length the header states (checked again, with everything else, by
    `decode_page`)."""
    if len(view) < 48:
        raise PageFormatError("truncated header")
    return int.from_bytes(view[40:48], "little")


@dataclass
class Warming:
    """A warm-up in progress: `done` once the record was read and its prefetches started."""

    done: bool = False
    prefixes: int = 0
    tickets: list | None = None
    error: str | None = None

    @property
    def fetched_tokens(self) -> int:
        return sum(t.fetched_tokens for t in self.tickets or ())


def publish(cache: PageOwner) -> None:
    """Merge this cache's hot prefixes into the shared record (asynchronous; applied in
    `poll()`). Does nothing without a remote tier."""
    if cache.store is None:
        return
    mine = hot_prefixes(cache)
    if not mine:
        return
    key = record_key(cache).hex()

    def on_read(fut) -> None:
        theirs: list[tuple[list[int], int]] = []
        if fut.exception() is None:
            try:
                theirs = _decode(cache, fut.result()[0])
            except (PageFormatError, ValueError) as err:
                log.warning("the shared hot-prefix record is unreadable (%s); replacing it", err)
        merged: dict[tuple[int, ...], float] = {}
        for tokens, hits in theirs:
            merged[tuple(tokens)] = hits / 2  # decayed: what nobody reads again fades
        for tokens, hits in mine:
            merged[tuple(tokens)] = merged.get(tuple(tokens), 0) + hits
        best = sorted(merged.items(), key=lambda kv: -kv[1] * len(kv[0]))[:MAX_PREFIXES]
        blob = _encode(cache, [(list(t), h) for t, h in best])
        cache.controller.put_blobs([(key, blob)], lambda f: None)

    cache.controller.get_blobs([key], on_read)


def warm(cache: PageOwner, *, host_share: float = 0.5) -> Warming:
    """Start bringing the shared record's hot prefixes into the host tier (asynchronous;
    progresses in `poll()`), at most `host_share` of it."""
    w = Warming()
    if cache.store is None or not cache.config.has_host_tier:
        w.done = True
        return w

    def on_read(fut) -> None:
        w.done = True
        if fut.exception() is not None:
            w.error = repr(fut.exception())
            return
        try:
            prefixes = _decode(cache, fut.result()[0])
        except (PageFormatError, ValueError) as err:
            cache.store.stats.count_corrupt(f"hot-prefix record: {err}")
            w.error = str(err)
            return
        budget = int(host_share * cache.config.host_pages) * cache.page_size
        w.tickets = []
        for tokens, _ in prefixes:
            n = cache.tree.aligned(min(len(tokens), budget))
            if n == 0:
                break
            budget -= n
            w.tickets.append(cache.prefetch(tokens[:n], discover=True, mark_kind=HOT))
        w.prefixes = len(w.tickets)
        log.info("warming the host tier with %d hot prefixes from the shared tier", w.prefixes)

    cache.controller.get_blobs([record_key(cache).hex()], on_read)
    return w
