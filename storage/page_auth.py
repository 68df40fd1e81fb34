"""Authenticated pages: a keyed MAC that only engines holding the deployment's secret can make.

A shared tier is writable by anyone who reaches it (the Redis, the directory, the Mooncake
cluster); a CRC proves only that bytes were not garbled, never who wrote them. With a deployment
secret every page and record carries an HMAC-SHA256 tag over its header and payload, checked in
constant time before a byte of it is used, so a forged or rewritten page is a miss.

Keys are derived per tenant: HMAC-SHA256(secret, "radixkv-page-key-v1" || tenant). A process
given only one tenant's derived key cannot compute another tenant's. `key_id`, a digest of the
derived key, goes into the cache namespace: engines with different secrets (or none) never even
address each other's pages.

The secret comes from a file (`--remote-secret-file`) or the environment
(`RADIXKV_REMOTE_SECRET`), never from a command-line value that `ps` would show.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat
from pathlib import Path

TAG_BYTES = 32  # HMAC-SHA256
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
SECRET_ENV = "RADIXKV_REMOTE_SECRET"


class PageAuth:
    """The MAC key of one deployment and tenant."""

    def __init__(self, secret: bytes, tenant: str = "") -> None:
        if not isinstance(secret, bytes) or len(secret) < MIN_SECRET_BYTES:
            raise ValueError(f"the remote tier's secret must be at least {MIN_SECRET_BYTES} bytes")
        self._key = hmac.new(
            secret, b"radixkv-page-key-v1\0" + tenant.encode(), hashlib.sha256
        ).digest()
        self.key_id = hashlib.blake2b(self._key, digest_size=16, person=b"radixkv-keyid").digest()

    def tag(self, *parts: bytes | memoryview) -> bytes:
        """The MAC of `parts` concatenated."""
        mac = hmac.new(self._key, digestmod=hashlib.sha256)
        for p in parts:
            mac.update(p)
        return mac.digest()

    def verify(self, tag: bytes | memoryview, *parts: bytes | memoryview) -> bool:
        """Whether `tag` is this key's MAC of `parts` (constant-time comparison)."""
        return hmac.compare_digest(bytes(tag), self.tag(*parts))

    def __repr__(self) -> str:  # never the key
        return f"PageAuth(key_id={self.key_id.hex()[:12]})"


def read_secret(path: str | Path | None = None) -> bytes | None:
    """The deployment secret: the file at `path`, else $RADIXKV_REMOTE_SECRET, else None. A file
    must be a regular file no other user can read or write; its bytes (surrounding whitespace
    stripped) are the secret."""
    if path is not None:
        p = Path(path)
        try:
            st = p.stat()
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"remote secret file {p} is not a regular file")
            if st.st_mode & 0o077:
                raise ValueError(
                    f"remote secret file {p} is readable or writable by others "
                    f"(mode {stat.S_IMODE(st.st_mode):o}): chmod 600 it"
                )
            if st.st_size > MAX_SECRET_BYTES:
                raise ValueError(f"remote secret file {p} is over {MAX_SECRET_BYTES} bytes")
            secret = p.read_bytes().strip()
        except OSError as err:
            raise ValueError(f"cannot read remote secret file {p}: {err.strerror}") from err
    else:
        env = os.environ.get(SECRET_ENV)
        if not env:
            return None
        secret = env.strip().encode()
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"the remote tier's secret must be at least {MIN_SECRET_BYTES} bytes")
    return secret
