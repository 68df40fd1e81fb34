"""The remote tier on Redis or Valkey (`redis://[:password@]host:port/db`, `rediss://` for TLS).

Batches go out as one pipeline of single-key commands (GET / SET / EXISTS / DEL, never MGET or
MSET), so every command routes by its own key's slot and the same code runs against Redis
Cluster (`?cluster=1`). Keys are `<prefix><hex page key>`: hashes, never user text. Capacity is
Redis's own business (`maxmemory` with an LRU policy); `?ttl=SECONDS` adds an expiry.
"""

from __future__ import annotations

from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from storage.remote import Blob, Oversize, RemoteStore

_OUR_PARAMS = ("prefix", "ttl", "cluster", "batch")


class RedisStore(RemoteStore):
    def __init__(
        self,
        url: str,
        *,
        prefix: str = "radixkv:",
        ttl_s: int | None = None,
        cluster: bool = False,
        batch: int = 128,
        socket_timeout_s: float = 5.0,
    ) -> None:
        super().__init__()
        try:
            import redis.asyncio as aredis
        except ImportError as err:  # pragma: no cover - depends on the install
            raise ValueError("redis:// needs redis-py: pip install 'radixkv[redis]'") from err
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        prefix = query.pop("prefix", prefix)
        ttl_s = int(query.pop("ttl")) if "ttl" in query else ttl_s
        cluster = query.pop("cluster", "1" if cluster else "0").lower() in ("1", "true", "yes")
        batch = int(query.pop("batch", batch))
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"redis ttl must be a positive number of seconds, got {ttl_s}")
        if batch < 1:
            raise ValueError(f"redis batch must be >= 1, got {batch}")
        clean = urlunsplit(parts._replace(query=urlencode(query)))
        self.prefix, self.ttl_s, self.batch = prefix, ttl_s, batch
        self._where = f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path}"
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff
        from redis.exceptions import ConnectionError as RedisConnectionError

        options = {
            "socket_timeout": socket_timeout_s,
            "socket_connect_timeout": socket_timeout_s,
            # a pooled connection from before a server restart fails once: retry on a new one
            "retry": Retry(NoBackoff(), 1),
            "retry_on_error": [RedisConnectionError],
        }
        if cluster:
            self._client = aredis.RedisCluster.from_url(clean, **options)
        else:
            self._client = aredis.from_url(clean, health_check_interval=10, **options)

    def describe(self) -> str:  # never shows the password
        return f"redis store at {self._where}"

    async def _pipelined(self, keys: list[str], command) -> list:
        """Run `command(pipe, full_key)` for every key, `batch` keys per round trip."""
        out: list = []
        for start in range(0, len(keys), self.batch):
            pipe = self._client.pipeline(transaction=False)
            for key in keys[start : start + self.batch]:
                command(pipe, self.prefix + key)
            out += await pipe.execute()
        return out

    async def exists(self, keys: list[str]) -> list[bool]:
        return [bool(n) for n in await self._pipelined(keys, lambda p, k: p.exists(k))]

    async def get(self, keys: list[str], max_bytes: int | None = None) -> list[Blob]:
        if max_bytes is None:
            return await self._pipelined(keys, lambda p, k: p.get(k))
        # the size first, and never more than the bound read (GETRANGE's end is inclusive)
        replies = await self._pipelined(
            keys, lambda p, k: (p.exists(k), p.strlen(k), p.getrange(k, 0, max_bytes))
        )
        out: list[Blob] = []
        for exists, size, head in zip(replies[::3], replies[1::3], replies[2::3], strict=True):
            out.append(None if not exists else Oversize(size) if size > max_bytes else head)
        return out

    async def put(self, items: list[tuple[str, bytes]]) -> list[bool]:
        values = dict(items)
        ok = await self._pipelined(
            [k for k, _ in items],
            lambda p, k: p.set(k, values[k[len(self.prefix) :]], ex=self.ttl_s),
        )
        stored = [bool(x) for x in ok]
        self.stats.add(
            puts=sum(stored),
            put_failures=len(stored) - sum(stored),
            bytes_written=sum(len(b) for (_, b), s in zip(items, stored, strict=True) if s),
        )
        return stored

    async def delete(self, keys: list[str]) -> int:
        return sum(await self._pipelined(keys, lambda p, k: p.delete(k)))

    async def close(self) -> None:
        await self._client.aclose()
