"""`open_store(url)`: a remote store by URL; `open_remote_tier(url)`: the same with the engine's
names ("none", "default") and a file tier's disk cap. Apart from `storage.remote` (the interface) so that
the concrete stores import the interface and this factory imports them, with no cycle. Redis
Mooncake and S3 clients load only when their scheme is asked for."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from storage.file_store import FileStore
from storage.remote import RemoteStore


def open_store(url: str, **options) -> RemoteStore:
    """A remote store from a URL: `file:///abs/path`, `redis://[:password@]host:port/db` (or
    `rediss://`), `mooncake://master-host:port`, `s3://bucket/prefix?endpoint=URL`."""
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
    if scheme == "s3":
        from storage.s3_store import S3Store

        return S3Store(url, **options)
    raise ValueError(
        f"unsupported remote store scheme {scheme!r} in {url!r} (supported: file, redis, rediss, "
        "mooncake, s3)"
    )


DEFAULT_REMOTE = "default"  # the file tier under the radixkv cache directory
AUTO_REMOTE_FRACTION = 0.10  # a file tier's default cap: this share of the disk's free space


def radixkv_cache_dir() -> Path:
    """$RADIXKV_CACHE, else ~/.cache/radixkv: models and the default file tier live there."""
    return Path(os.environ.get("RADIXKV_CACHE") or Path.home() / ".cache" / "radixkv")


def default_remote_dir() -> Path:
    return (radixkv_cache_dir() / "remote-tier").resolve()


def open_remote_tier(url: str | None, *, max_gb: float | None = None) -> RemoteStore | None:
    """The one opener of a remote tier, for the engine and the cache alike: None or "none" is no
    tier; "default" is a file tier under `radixkv_cache_dir()`; a file tier is capped at
    `max_gb`, by default a tenth of its disk's free space, across processes; any other URL goes
    to `open_store` (whose stores have their own capacity settings)."""
    if url is None or url.lower() == "none":
        return None
    if url == DEFAULT_REMOTE:
        url = default_remote_dir().as_uri()
    if not url.startswith("file://"):
        if max_gb is not None:
            raise ValueError(
                "remote_max_gb caps a file tier; cap Redis or Mooncake with their own settings"
            )
        return open_store(url)
    root = Path(url[len("file://") :])
    if max_gb is not None:
        cap = int(max_gb * 2**30)
    else:
        probe = next(p for p in (root, *root.parents) if p.exists())
        cap = max(1 << 20, int(shutil.disk_usage(probe).free * AUTO_REMOTE_FRACTION))
    return open_store(url, capacity_bytes=cap)
