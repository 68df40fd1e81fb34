"""Cache namespaces and chained page keys for the shared remote tier.

key(page 0) = H(seed, tokens of page 0); key(page i) = H(key(page i-1), tokens of page i), where
seed = H(model fingerprint, KV layout incl. dtype and page size, tenant salt). A key therefore
names a page *and its whole prefix* under one model and tenant: different models or tenants can
never address each other's pages, and keys carry no user text (only a 16-byte digest).
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from storage.layout import KVLayout

KEY_BYTES = 16


def key_digest(*parts: bytes) -> bytes:
    """A 16-byte BLAKE2b digest of `parts`, each length-prefixed (so no two lists collide)."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest()


@dataclass(frozen=True)
class CacheNamespace:
    """What makes two processes' KV pages interchangeable: same weights, same layout, same tenant."""

    model_fingerprint: str
    layout: KVLayout
    tenant_salt: str = ""
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model_fingerprint, str) or not self.model_fingerprint:
            raise ValueError("model_fingerprint must be a non-empty string")
        if not isinstance(self.tenant_salt, str):
            raise ValueError("tenant_salt must be a string")
        seed = key_digest(
            b"radixkv-ns-v1",
            self.model_fingerprint.encode(),
            self.layout.describe().encode(),
            self.tenant_salt.encode(),
        )
        object.__setattr__(self, "digest", seed)

    def page_keys(self, prev: bytes | None, tokens: Sequence[int], num_pages: int) -> list[bytes]:
        """Chained keys of `num_pages` whole pages of `tokens`, continuing from key `prev`
        (None: the first page of a sequence)."""
        ps = self.layout.page_size
        if len(tokens) < num_pages * ps:
            raise ValueError(f"{len(tokens)} tokens do not fill {num_pages} pages of {ps}")
        key = self.digest if prev is None else prev
        out = []
        for i in range(num_pages):
            key = key_digest(key, array("q", tokens[i * ps : (i + 1) * ps]).tobytes())
            out.append(key)
        return out
