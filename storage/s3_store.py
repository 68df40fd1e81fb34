"""The remote tier on S3 or an S3-compatible object store (`s3://bucket/prefix?endpoint=URL`):
the cold tier that outlives every engine, shared across sessions and machines.

One object per page, named `<prefix>/<hex page key>`: hashes, never user text. Credentials and
region come from the usual AWS environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_ENDPOINT_URL), never from the URL.
The client is obstore (Rust's object_store, native asyncio), chosen by measurement over boto3
(`benchmarks/s3_clients.py`): 1.8-2.3x boto3's get throughput on SeaweedFS, and a dead endpoint
fails within its timeout. A bounded get is one ranged GET: never more than the bound is read,
and the object's full size comes back with it. Capacity is the bucket's business (a lifecycle
rule that expires old objects).
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from urllib.parse import parse_qsl, urlsplit

from storage.remote import Blob, Oversize, RemoteStore

_OUR_PARAMS = ("endpoint", "region", "concurrency", "timeout")


class S3Store(RemoteStore):
    def __init__(
        self,
        url: str,
        *,
        concurrency: int = 64,
        timeout_s: float = 10.0,
    ) -> None:
        super().__init__()
        try:
            import obstore
            from obstore.store import S3Store as ObjectStoreS3
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ValueError("s3:// needs obstore: pip install 'radixkv[s3]'") from err
        parts = urlsplit(url)
        if not parts.hostname:
            raise ValueError(f"s3 URL needs a bucket (s3://bucket/prefix), got {url!r}")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - set(_OUR_PARAMS)
        if unknown:
            raise ValueError(f"unknown s3 URL options {sorted(unknown)}; known: {_OUR_PARAMS}")
        if parts.username or parts.password:
            raise ValueError("s3 URL must not carry credentials: use the AWS_* environment")
        endpoint = query.get("endpoint") or os.environ.get("AWS_ENDPOINT_URL")
        region = (
            query.get("region")
            or os.environ.get("AWS_REGION")
            or os.environ.get("AWS_DEFAULT_REGION")
            or "us-east-1"
        )
        concurrency = int(query.get("concurrency", concurrency))
        timeout_s = float(query.get("timeout", timeout_s))
        if concurrency < 1 or not timeout_s > 0:
            raise ValueError("s3 concurrency must be >= 1 and timeout > 0")
        self.bucket, self.prefix = parts.hostname, parts.path.strip("/")
        options = {"timeout": f"{timeout_s}s", "connect_timeout": f"{timeout_s}s"}
        if endpoint and endpoint.startswith("http://"):
            options["allow_http"] = True
        config = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        self._obs = obstore
        self._store = ObjectStoreS3(
            self.bucket,
            prefix=self.prefix or None,
            client_options=options,
            # the breaker decides about failures; a retry inside would hold the engine's I/O
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=timeout_s)},
            **config,
        )
        self._where = f"s3://{self.bucket}/{self.prefix}" + (f" at {endpoint}" if endpoint else "")
        self._limit = concurrency
        self._sem: asyncio.Semaphore | None = None  # made on the store's own event loop

    def describe(self) -> str:
        return f"s3 store {self._where}"

    async def _each(self, items, call) -> list:
        """`call(item)` for every item, at most `concurrency` requests in flight."""
        if self._sem is None:
            self._sem = asyncio.Semaphore(self._limit)

        async def one(item):
            async with self._sem:
                return await call(item)

        return await asyncio.gather(*(one(i) for i in items))

    async def exists(self, keys: list[str]) -> list[bool]:
        async def head(key: str) -> bool:
            try:
                await self._obs.head_async(self._store, key)
                return True
            except FileNotFoundError:
                return False

        return await self._each(keys, head)

    async def get(self, keys: list[str], max_bytes: int | None = None) -> list[Blob]:
        options = None if max_bytes is None else {"range": (0, max_bytes + 1)}

        async def get(key: str) -> Blob:
            try:
                reply = await self._obs.get_async(self._store, key, options=options)
            except FileNotFoundError:
                return None
            size = reply.meta["size"]
            if max_bytes is not None and size > max_bytes:
                return Oversize(size)  # at most max_bytes + 1 of it crossed the wire
            return bytes(await reply.bytes_async())

        return await self._each(keys, get)

    async def put(self, items: list[tuple[str, bytes]]) -> list[bool]:
        async def put(item: tuple[str, bytes]) -> bool:
            await self._obs.put_async(self._store, item[0], item[1])
            return True

        stored = await self._each(items, put)
        self.stats.add(puts=len(stored), bytes_written=sum(len(b) for _, b in items))
        return stored

    async def delete(self, keys: list[str]) -> int:
        present = await self.exists(keys)  # S3's DELETE says nothing of what existed
        gone = [k for k, p in zip(keys, present, strict=True) if p]
        if gone:
            await self._obs.delete_async(self._store, gone)
        return len(gone)
