"""Cross-instance hot prefixes: the prefixes one process's requests read most, kept in the shared
remote tier so that another process (a new pod, a restart) warms its host tier from them.

The record lives under one key derived from the namespace, so only processes with the same
model, KV format, tenant and deployment share it. It is framed like a page (`storage.codec`:
namespace, key, and the deployment's MAC or a CRC) around a JSON payload: at most
`MAX_PREFIXES` token sequences with their read counts, `MAX_RECORD_BYTES` in all. It is hostile
until checked: an entry over the bound is not read, and a record failing the codec or any field
check (`_decode`) is counted, logged at most once a minute, removed and ignored; nothing in it
can stop the engine thread (`contained`). Nothing is unpickled. Publishing
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
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from radixkv.cache.namespace import key_digest
from radixkv.cache.prefetch.prefetcher import HOT
from storage.codec import PageFormatError, decode_page, encode_page
from storage.log_limits import limit_repeats
from storage.remote import Blob, Oversize

if TYPE_CHECKING:
    from radixkv.cache.owner import PageOwner

log = logging.getLogger(__name__)

MAX_PREFIXES = 64
MAX_PREFIX_TOKENS = 65_536
MAX_TOKEN_ID = 1 << 31  # no vocabulary comes near; keys pack ids as 64-bit integers
MAX_RECORD_BYTES = 4 << 20  # read at most this much of the shared record
HEADER_SLACK = 256  # the codec's header and dims, well within
MIN_HITS = 2  # a prefix read by one request only is not hot
limit_repeats(log, "hot-prefix record was rejected", 60.0)  # once a minute at most


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


def _encode(cache: PageOwner, prefixes: list[tuple[list[int], float]]) -> bytes:
    """The record framed like a page (authenticated with the deployment's key, if any); the
    coldest prefixes are left out until it fits `MAX_RECORD_BYTES`."""
    while True:
        payload = json.dumps({"v": 1, "prefixes": [[t, h] for t, h in prefixes]}).encode()
        if len(payload) + HEADER_SLACK <= MAX_RECORD_BYTES or not prefixes:
            break
        prefixes = prefixes[:-1]
    return frame_record(cache, payload)


def frame_record(cache: PageOwner, payload: bytes) -> bytes:
    """`payload` framed as the namespace's record: its key, and the deployment's MAC if any."""
    return encode_page(
        payload,
        namespace=cache.namespace.digest,
        key=record_key(cache),
        shape=(len(payload),),
        dtype=torch.uint8,
        auth=cache.namespace.auth,
    )


def _decode(cache: PageOwner, blob: Blob) -> list[tuple[list[int], float]]:
    """The record's prefixes, checked field by field; [] when absent. Raises PageFormatError
    (too large, not ours, forged) or ValueError (malformed) for a bad one."""
    if blob is None:
        return []
    if isinstance(blob, Oversize):
        raise PageFormatError(f"record of {blob.size} bytes, over {MAX_RECORD_BYTES}")
    view = memoryview(blob)
    payload = decode_page(
        blob,
        namespace=cache.namespace.digest,
        key=record_key(cache),
        shape=(_payload_len(view),),
        dtype=torch.uint8,
        auth=cache.namespace.auth,
    )
    try:
        data = json.loads(bytes(payload))
    except (ValueError, RecursionError) as err:
        raise ValueError(f"not JSON ({type(err).__name__})") from None
    if not isinstance(data, dict) or data.get("v") != 1:
        raise ValueError("not a version-1 hot-prefix record")
    items = data.get("prefixes")
    if not isinstance(items, list) or len(items) > MAX_PREFIXES:
        raise ValueError(f"prefixes must be a list of at most {MAX_PREFIXES}")
    out = []
    for item in items:
        if not (isinstance(item, list) and len(item) == 2):
            raise ValueError("a hot prefix must be [token ids, reads]")
        tokens, hits = item
        if not (isinstance(tokens, list) and 0 < len(tokens) <= MAX_PREFIX_TOKENS):
            raise ValueError(f"a hot prefix must hold 1 to {MAX_PREFIX_TOKENS} token ids")
        if not all(type(t) is int and 0 <= t < MAX_TOKEN_ID for t in tokens):
            raise ValueError(f"token ids must be integers in [0, {MAX_TOKEN_ID})")
        if type(hits) not in (int, float) or not (0 <= hits < math.inf):
            raise ValueError("a hot prefix's reads must be a finite number >= 0")
        out.append((tokens, float(hits)))
    return out


def _payload_len(view: memoryview) -> int:
    """The payload length the header states (checked again, with everything else, by
    `decode_page`)."""
    if len(view) < 48:
        raise PageFormatError("truncated header")
    return int.from_bytes(view[40:48], "little")


def _reject(cache: PageOwner, err: Exception) -> None:
    """A bad shared record: counted, logged (rate-limited), removed, never fatal."""
    cache.store.stats.count_corrupt(f"hot-prefix record: {err}"[:120])
    log.warning("the shared hot-prefix record was rejected and removed: %s", err)
    cache.controller.delete_blobs([record_key(cache).hex()], lambda f: None)


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

    def on_read(fut) -> None:  # in poll(), on the engine thread: must never raise
        theirs: list[tuple[list[int], float]] = []
        if fut.exception() is None:
            try:
                theirs = _decode(cache, fut.result()[0])
            except (PageFormatError, ValueError) as err:
                cache.store.stats.count_corrupt(f"hot-prefix record: {err}"[:120])
                log.warning("the shared hot-prefix record was rejected (%s): replaced", err)
        merged: dict[tuple[int, ...], float] = {}
        for tokens, hits in theirs:
            merged[tuple(tokens)] = hits / 2  # decayed: what nobody reads again fades
        for tokens, hits in mine:
            merged[tuple(tokens)] = merged.get(tuple(tokens), 0) + hits
        best = sorted(merged.items(), key=lambda kv: -kv[1] * len(kv[0]))[:MAX_PREFIXES]
        blob = _encode(cache, [(list(t), h) for t, h in best])
        cache.controller.put_blobs([(key, blob)], lambda f: None)

    cache.controller.get_blobs([key], MAX_RECORD_BYTES, contained(on_read))


def warm(cache: PageOwner, *, host_share: float = 0.5) -> Warming:
    """Start bringing the shared record's hot prefixes into the host tier (asynchronous;
    progresses in `poll()`), at most `host_share` of it."""
    w = Warming()
    if cache.store is None or not cache.config.has_host_tier:
        w.done = True
        return w

    def on_read(fut) -> None:  # in poll(), on the engine thread: must never raise
        w.done = True
        if fut.exception() is not None:
            w.error = repr(fut.exception())
            return
        try:
            prefixes = _decode(cache, fut.result()[0])
        except (PageFormatError, ValueError) as err:
            _reject(cache, err)
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

    cache.controller.get_blobs([record_key(cache).hex()], MAX_RECORD_BYTES, contained(on_read))
    return w


def contained(callback):
    """`callback` that logs and swallows what it raises: nothing read from a shared tier may
    stop the engine thread that applies it."""

    def run(fut) -> None:
        try:
            callback(fut)
        except Exception:
            log.exception("applying the shared hot-prefix record failed; ignored")

    return run
