"""The remote tier's interface: a key/bytes store shared by many engine processes.

A store moves opaque blobs by key, in batches, asynchronously. It is a cache, never the source
of truth: `read_pages` verifies every blob with the page codec, and a blob failing any check is
counted, deleted from the store and reported as a miss.
"""

from __future__ import annotations

import abc
import logging
import math
import threading
from dataclasses import dataclass, field, fields

import torch

from storage.codec import PageFormatError, decode_page, max_blob_bytes
from storage.log_limits import limit_repeats
from storage.page_auth import PageAuth

log = logging.getLogger(__name__)


limit_repeats(log, "rejected", 10.0)  # a store full of bad pages logs once in 10 s


@dataclass
class RemoteStats:
    """Counters of one process's traffic with a remote store (thread-safe increments)."""

    gets: int = 0
    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    puts: int = 0
    put_failures: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    evicted: int = 0
    corrupt_reasons: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def count_corrupt(self, reason: str) -> None:
        with self._lock:
            self.corrupt += 1
            self.corrupt_reasons[reason] = self.corrupt_reasons.get(reason, 0) + 1

    def as_dict(self) -> dict:
        with self._lock:
            return {
                f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")
            } | {"corrupt_reasons": dict(self.corrupt_reasons)}


class Oversize:
    """What a bounded `get` returns for an entry larger than the caller's bound (unread)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __repr__(self) -> str:
        return f"Oversize({self.size})"


Blob = bytes | Oversize | None  # what `get` returns per key


class RemoteStore(abc.ABC):
    """Batched async key/bytes store. Keys are short ASCII strings (hex page keys)."""

    def __init__(self) -> None:
        self.stats = RemoteStats()

    @abc.abstractmethod
    async def exists(self, keys: list[str]) -> list[bool]: ...

    @abc.abstractmethod
    async def get(self, keys: list[str], max_bytes: int | None = None) -> list[Blob]:
        """The stored blob per key, None where absent. With `max_bytes`, an entry whose size
        exceeds it is not read: `Oversize` (a planted 64 MB entry costs a size query)."""

    @abc.abstractmethod
    async def put(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """Store blobs; per item, whether it was stored."""

    @abc.abstractmethod
    async def delete(self, keys: list[str]) -> int:
        """Remove keys; returns how many existed."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and handles."""

    def describe(self) -> str:
        return type(self).__name__


async def read_pages(
    store: RemoteStore,
    keys: list[bytes],
    *,
    namespace: bytes,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    auth: PageAuth | None = None,
) -> list[memoryview | None]:
    """Get and verify pages: a payload per key, or None for a miss (absent or failing a check).

    An entry larger than such a page can be is not read; entries failing verification (a
    forged MAC included) are deleted from the store so no reader sees them again.
    """
    names = [k.hex() for k in keys]
    payload_bytes = math.prod(shape) * dtype.itemsize
    blobs = await store.get(names, max_blob_bytes(payload_bytes, len(shape)))
    out: list[memoryview | None] = []
    bad: list[str] = []
    for key, name, blob in zip(keys, names, blobs, strict=True):
        if blob is None:
            store.stats.add(misses=1)
            out.append(None)
            continue
        try:
            if isinstance(blob, Oversize):
                raise PageFormatError("entry larger than a page")
            out.append(
                decode_page(blob, namespace=namespace, key=key, shape=shape, dtype=dtype, auth=auth)
            )
            store.stats.add(hits=1, bytes_read=len(blob))
        except PageFormatError as err:
            store.stats.count_corrupt(err.reason)
            log.warning(
                "remote page %s rejected (%s); treated as a miss and removed", name, err.reason
            )
            bad.append(name)
            out.append(None)
    store.stats.add(gets=len(keys))
    if bad:
        await store.delete(bad)
    return out
