"""Cache namespaces and chained page keys for the shared remote tier.

key(page 0) = H(seed, tokens of page 0); key(page i) = H(key(page i-1), tokens of page i), where
seed = H(model identity, KV layout incl. dtype and page size, KV scale scheme, tenant salt, the
id of the deployment's MAC key). The model identity covers the weights' bytes and the
tokenizer (`engine.weights_digest`). A key therefore names a page *and its whole prefix* under
one model, KV format, tenant and deployment: none of them can address another's pages, and keys
carry no user text (only a 16-byte digest). Pages are authenticated apart from their keys
(`storage.page_auth`): a key is a name anyone may compute, a MAC is a proof only the secret's
holders can make.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field

from storage.layout import KVLayout
from storage.page_auth import PageAuth

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
    """What makes two processes' KV pages interchangeable: same weights and tokenizer, same KV
    layout and scale scheme, same tenant, same deployment secret (`auth`; None: unauthenticated
    pages, which only engines without a secret read)."""

    model_fingerprint: str
    layout: KVLayout
    tenant_salt: str = ""
    auth: PageAuth | None = field(default=None, repr=False, compare=False)
    kv_scheme: str = "plain"  # how KV values are scaled in a page: part of the format
    digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model_fingerprint, str) or not self.model_fingerprint:
            raise ValueError("model_fingerprint must be a non-empty string")
        if not isinstance(self.tenant_salt, str):
            raise ValueError("tenant_salt must be a string")
        if self.auth is not None and not isinstance(self.auth, PageAuth):
            raise ValueError("auth must be a storage.page_auth.PageAuth")
        seed = key_digest(
            b"radixkv-ns-v2",
            self.model_fingerprint.encode(),
            self.layout.describe().encode(),
            self.kv_scheme.encode(),
            self.tenant_salt.encode(),
            self.auth.key_id if self.auth is not None else b"unauthenticated",
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
