"""`open_store(url)`: a remote store by URL. Apart from `storage.remote` (the interface) so that
the concrete stores import the interface and this factory imports them, with no cycle. Redis
and Mooncake clients load only when their scheme is asked for."""

from __future__ import annotations

from storage.file_store import FileStore
from storage.remote import RemoteStore


def open_store(url: str, **options) -> RemoteStore:
    """A remote store from a URL: `file:///abs/path`, `redis://[:password@]host:port/db` (or
    `rediss://`), `mooncake://master-host:port`."""
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(f"remote store URL must look like scheme://..., got {url!r}")
    scheme, rest = url.split("://", 1)
    if scheme == "file":
        if not rest.startswith("/"):
            raise ValueError(f"file store URL needs an absolute path (file:///path), got {url!r}")
        return FileStore(rest, **options)
    if scheme in ("redis", "rediss"):
        from storage.redis_store import RedisStore

        return RedisStore(url, **options)
    if scheme == "mooncake":
        from storage.mooncake_store import MooncakeStore

        return MooncakeStore(url, **options)
    raise ValueError(
        f"unsupported remote store scheme {scheme!r} in {url!r} (supported: file, redis, rediss, mooncake)"
    )
