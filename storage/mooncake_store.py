"""The remote tier on Mooncake Store (`mooncake://master-host:port`).

Each engine process is a Mooncake client: it contributes `segment_mb` of its memory to the
distributed pool and talks to the master over TCP, with peers found through the P2P handshake
(no separate metadata server). The client's calls block, so they run in worker threads. Keys are
hex page hashes; values are framed pages (the master never sees user text).

`?segment_mb=N&buffer_mb=N&local_host=ADDR&protocol=tcp` tune the client.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from urllib.parse import parse_qsl, urlsplit

from storage.remote import Blob, Oversize, RemoteStore

log = logging.getLogger(__name__)


class MooncakeStore(RemoteStore):
    def __init__(
        self,
        url: str,
        *,
        segment_mb: int = 512,
        buffer_mb: int = 128,
        local_host: str = "127.0.0.1",
        protocol: str = "tcp",
    ) -> None:
        super().__init__()
        parts = urlsplit(url)
        if not parts.hostname or not parts.port:
            raise ValueError(f"mooncake URL must be mooncake://master-host:port, got {url!r}")
        query = dict(parse_qsl(parts.query))
        self.segment_bytes = int(query.get("segment_mb", segment_mb)) << 20
        self.buffer_bytes = int(query.get("buffer_mb", buffer_mb)) << 20
        self.local_host = query.get("local_host", local_host)
        self.protocol = query.get("protocol", protocol)
        self.master = f"{parts.hostname}:{parts.port}"
        self._lock = threading.Lock()  # guards (re)connection
        self._client = None
        self._connect()

    def describe(self) -> str:
        return f"mooncake store, master {self.master}"

    def _connect(self):
        """A set-up client; raises ConnectionError when the master cannot be reached."""
        with self._lock:
            if self._client is not None:
                return self._client
            # the client logs every connection step at INFO through glog; keep warnings and up
            # unless the user asked otherwise
            os.environ.setdefault("GLOG_minloglevel", "2")
            try:
                from mooncake.store import MooncakeDistributedStore
            except ImportError as err:  # pragma: no cover - depends on the install
                raise ValueError(
                    "mooncake:// needs the mooncake-transfer-engine wheels: "
                    "pip install 'radixkv[mooncake]'"
                ) from err
            client = MooncakeDistributedStore()
            rc = client.setup(
                self.local_host,
                "P2PHANDSHAKE",
                self.segment_bytes,
                self.buffer_bytes,
                self.protocol,
                "",
                self.master,
            )
            if rc != 0:
                raise ConnectionError(f"mooncake setup with master {self.master} failed ({rc})")
            self._client = client
            return client

    async def _call(self, name: str, *args):
        """One blocking client call in a worker thread."""
        return await self._in_thread(lambda client: getattr(client, name)(*args))

    async def _call_each(self, name: str, keys: list[str]) -> list:
        """One blocking client call per key, all in one worker thread."""
        return await self._in_thread(lambda client: [getattr(client, name)(k) for k in keys])

    async def _in_thread(self, work):
        """`work(client)` in a worker thread; a failure drops the client so that the next call
        reconnects (the master may have restarted)."""

        def run():
            client = self._connect()
            try:
                return work(client)
            except Exception:
                self._drop(client)
                raise

        return await asyncio.to_thread(run)

    def _drop(self, client) -> None:
        with self._lock:
            if self._client is client:
                self._client = None

    def _check_master(self, codes: list[int]) -> None:
        if codes and all(c < 0 for c in codes):  # every key failed: the master is the problem
            raise ConnectionError(f"mooncake master {self.master} rejected the batch ({codes[0]})")

    async def exists(self, keys: list[str]) -> list[bool]:
        if not keys:
            return []
        codes = list(await self._call("batch_is_exist", keys))
        self._check_master(codes)
        return [c == 1 for c in codes]

    async def get(self, keys: list[str], max_bytes: int | None = None) -> list[Blob]:
        out: list[Blob] = []
        for start in range(0, len(keys), 32):  # sizes are unknown before a read: bound the count
            chunk = keys[start : start + 32]
            if max_bytes is None:
                blobs = await self._call("get_batch", chunk)
                out += [bytes(b) if len(b) else None for b in blobs]
                continue
            sizes = await self._call_each("get_size", chunk)  # < 0: absent
            small = [k for k, n in zip(chunk, sizes, strict=True) if 0 < n <= max_bytes]
            blobs = iter(await self._call("get_batch", small) if small else ())
            for n in sizes:
                if n <= 0:
                    out.append(None)
                elif n > max_bytes:
                    out.append(Oversize(n))
                else:
                    b = next(blobs)
                    out.append(bytes(b) if len(b) else None)
        return out

    def _chunks(self, sizes: list[int]) -> list[tuple[int, int]]:
        """[start, end) runs whose bytes fit half the client's transfer buffer (a batch larger
        than the buffer fails as a whole)."""
        limit, runs, start, total = self.buffer_bytes // 2, [], 0, 0
        for i, n in enumerate(sizes):
            if i > start and total + n > limit:
                runs.append((start, i))
                start, total = i, 0
            total += n
        return runs + [(start, len(sizes))] if sizes else runs

    async def put(self, items: list[tuple[str, bytes]]) -> list[bool]:
        out: list[bool] = []
        for start, end in self._chunks([len(b) for _, b in items]):
            part = items[start:end]
            rc = await self._call("upsert_batch", [k for k, _ in part], [b for _, b in part])
            ok = rc == 0
            self.stats.add(
                puts=len(part) if ok else 0,
                put_failures=0 if ok else len(part),
                bytes_written=sum(len(b) for _, b in part) if ok else 0,
            )
            if not ok:
                log.debug("mooncake upsert of %d pages failed (%d)", len(part), rc)
            out += [ok] * len(part)
        return out

    async def delete(self, keys: list[str]) -> int:
        if not keys:
            return 0
        codes = await self._call("batch_remove", keys, True)
        return sum(1 for c in codes if c == 0)

    async def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
