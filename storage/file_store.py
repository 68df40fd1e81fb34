"""The embedded remote tier: one file per page in a local directory, shared by processes.

- Writes are atomic: a temporary file in the same directory, then rename. A reader sees a whole
  old entry, a whole new one, or none.
- A size cap with least-recently-used eviction: reads refresh an entry's mtime; when the
  directory outgrows the cap, the oldest entries go until it is at `low_watermark` of the cap.
- Several processes may share the directory: the byte usage lives in a small counter file
  updated under an flock, and eviction sweeps take the same lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import stat
import struct
from pathlib import Path

from storage.remote import Blob, Oversize, RemoteStore

_USAGE = struct.Struct("<q")
MAX_PARALLEL = 4  # executor tasks per batch
log = logging.getLogger(__name__)
CHUNK_MIN = 16  # pages per task at least


def private_file(path: Path):
    """A new file only its owner can read or write (0600, whatever the umask)."""
    return os.fdopen(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "wb")


class FileStore(RemoteStore):
    def __init__(
        self, root: str | os.PathLike, capacity_bytes: int | None = None, low_watermark: float = 0.9
    ) -> None:
        super().__init__()
        if capacity_bytes is not None and capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive or None, got {capacity_bytes}")
        if not 0.0 < low_watermark <= 1.0:
            raise ValueError(f"low_watermark must be in (0, 1], got {low_watermark}")
        self.root = Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if (mode := stat.S_IMODE(self.root.stat().st_mode)) & 0o077:
            log.warning(
                "the file tier %s is open to other users (mode %o): they can read its pages "
                "(prompts' KV); chmod 700 it unless it is shared on purpose",
                self.root,
                mode,
            )
        self.capacity_bytes = capacity_bytes
        self.low_watermark = low_watermark
        self._shards: set[str] = set()  # shard directories known to exist
        self._lock_path = self.root / ".lock"
        self._usage_path = self.root / ".usage"
        with self._locked():
            if not self._usage_path.exists():
                self._write_usage(self._scan_bytes())

    def describe(self) -> str:
        cap = (
            "unbounded"
            if self.capacity_bytes is None
            else f"cap {self.capacity_bytes / 2**20:.1f} MiB"
        )
        return f"file store at {self.root} ({cap})"

    # ---- paths and shared accounting -------------------------------------------------------
    def _path(self, key: str) -> Path:
        if not key or not all(c in "0123456789abcdef" for c in key):
            raise ValueError(f"file store keys are lowercase hex strings, got {key!r}")
        return self.root / key[:2] / key

    @contextlib.contextmanager
    def _locked(self):
        # recreated if deleted under a running store
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _read_usage(self) -> int:
        try:
            data = self._usage_path.read_bytes()
            return _USAGE.unpack(data)[0] if len(data) == _USAGE.size else self._scan_bytes()
        except FileNotFoundError:
            return self._scan_bytes()

    def _write_usage(self, value: int) -> None:
        tmp = self._usage_path.with_suffix(f".tmp{os.getpid()}")
        with private_file(tmp) as f:
            f.write(_USAGE.pack(max(0, value)))
        os.replace(tmp, self._usage_path)

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(mtime, size, path) of every stored entry: a full scan, only for sweeps."""
        out = []
        for shard in os.scandir(self.root):
            if not shard.is_dir() or len(shard.name) != 2:
                continue
            for entry in os.scandir(shard.path):
                if entry.name.startswith(".tmp"):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def _scan_bytes(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def usage_bytes(self) -> int:
        """Bytes stored by all processes sharing the directory."""
        with self._locked():
            return self._read_usage()

    def _commit(self, renames: list[tuple[Path, Path]], removals: list[Path]) -> list[bool]:
        """Under the lock: move written temp files into place and remove entries, keeping the
        shared usage exact (the old size is read under the same lock); sweep if over the cap."""
        done = []
        with self._locked():
            usage = self._read_usage()
            for tmp, path in renames:
                try:
                    old = path.stat().st_size
                except FileNotFoundError:
                    old = 0
                try:
                    size = tmp.stat().st_size
                    os.replace(tmp, path)
                    usage += size - old
                    done.append(True)
                except OSError:
                    done.append(False)
            for path in removals:
                try:
                    size = path.stat().st_size
                    path.unlink()
                    usage -= size
                    done.append(True)
                except FileNotFoundError:
                    done.append(False)
            if self.capacity_bytes is not None and usage > self.capacity_bytes:
                usage = self._sweep()
            self._write_usage(usage)
        return done

    def _sweep(self) -> int:
        """Evict least recently used entries down to the low watermark; returns bytes kept."""
        entries = sorted(self._entries())
        usage = sum(size for _, size, _ in entries)
        target = int(self.capacity_bytes * self.low_watermark)
        evicted = 0
        for _, size, path in entries:
            if usage <= target:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                usage -= size
                evicted += 1
        self.stats.add(evicted=evicted)
        return usage

    # ---- the store interface -----------------------------------------------------------------
    # Each batch runs as a few executor tasks of plain file I/O (chunks in parallel), not one
    # thread hop per open/write/close: measured 10-50x faster per page (docs/benchmarks.md).
    async def _in_chunks(self, fn, items: list) -> list:
        if not items:
            return []
        step = max(CHUNK_MIN, -(-len(items) // MAX_PARALLEL))
        parts = await asyncio.gather(
            *(asyncio.to_thread(fn, items[i : i + step]) for i in range(0, len(items), step))
        )
        return [x for part in parts for x in part]

    async def exists(self, keys: list[str]) -> list[bool]:
        return await self._in_chunks(lambda ks: [self._path(k).is_file() for k in ks], keys)

    def _read_sync(self, keys: list[str], max_bytes: int | None) -> list[Blob]:
        out: list[Blob] = []
        for key in keys:
            path = self._path(key)
            try:
                with open(path, "rb") as f:
                    size = os.fstat(f.fileno()).st_size
                    if max_bytes is not None and size > max_bytes:
                        out.append(Oversize(size))  # not read: a planted giant costs a stat
                        continue
                    blob = f.read() if max_bytes is None else f.read(max_bytes + 1)
            except FileNotFoundError:
                blob = None
            else:  # refresh recency for LRU eviction (unless it was removed since the read)
                with contextlib.suppress(FileNotFoundError):
                    os.utime(path)
            out.append(blob)
        return out

    async def get(self, keys: list[str], max_bytes: int | None = None) -> list[Blob]:
        return await self._in_chunks(lambda ks: self._read_sync(ks, max_bytes), keys)

    def _write_temp_sync(self, items: list[tuple[str, bytes]]) -> list[tuple[Path, Path] | OSError]:
        out: list[tuple[Path, Path] | OSError] = []
        for key, blob in items:
            path = self._path(key)
            tmp = path.parent / f".tmp-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                if path.parent.name not in self._shards:
                    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    self._shards.add(path.parent.name)
                with private_file(tmp) as f:
                    f.write(blob)
                out.append((tmp, path))
            except OSError as err:  # a full, read-only or vanished disk
                self._shards.clear()  # the directory may be gone: make shards again next time
                with contextlib.suppress(OSError):
                    tmp.unlink()
                out.append(err)
        return out

    async def put(self, items: list[tuple[str, bytes]]) -> list[bool]:
        """Store a batch; a disk error (ENOSPC, EROFS, a deleted directory) fails the whole call,
        so the circuit breaker sees the tier failing (and marks it degraded) like any fault."""
        written = await self._in_chunks(self._write_temp_sync, items)
        errors = [w for w in written if isinstance(w, OSError)]
        if errors:
            for w in written:
                if not isinstance(w, OSError):
                    with contextlib.suppress(OSError):
                        w[0].unlink()
            self.stats.add(put_failures=len(items))
            raise errors[0]
        renames = list(written)
        ok = await asyncio.to_thread(self._commit, renames, [])
        stored = sum(len(b) for (_, b), good in zip(items, ok, strict=True) if good)
        self.stats.add(puts=sum(ok), put_failures=len(ok) - sum(ok), bytes_written=stored)
        return ok

    async def delete(self, keys: list[str]) -> int:
        paths = [self._path(k) for k in keys]
        return sum(await asyncio.to_thread(self._commit, [], paths))
