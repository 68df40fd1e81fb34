"""radixkv's remote tier as SGLang's HiCache storage backend (its `dynamic` backend).

    python -m sglang.launch_server ... --enable-hierarchical-cache \\
        --hicache-storage-backend dynamic --hicache-storage-backend-extra-config \\
        '{"backend_name": "radixkv", "module_path": "storage.sglang_storage",
          "class_name": "RadixKVStorage", "remote_url": "redis://127.0.0.1:6379/0"}'

Any radixkv store URL works (file, redis, rediss, mooncake). Every value is framed and verified
by radixkv's page codec (namespace, key, shape, dtype, and a CRC32, or with a deployment secret
an HMAC-SHA256: `secret_file` in the extra config, else $RADIXKV_REMOTE_SECRET; never pickled),
and read no larger than its target, so a corrupt, truncated, forged or foreign entry reads as a
miss. The namespace binds the model name, the KV shard the rank holds (tensor / pipeline /
context parallel), the page layout, an optional `tenant` salt and the secret's key id; stored
keys are hashes of SGLang's page hashes. The model name is what SGLang says: it does not cover
the weights' bytes, so give a fine-tune its own `tenant`.
Calls run on a private event loop under a timeout and a circuit breaker: a failing store makes
SGLang recompute, never wait.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from typing import Any

import torch

from storage import PageFormatError, decode_page, encode_page, open_store
from storage.breaker import CircuitBreaker
from storage.codec import max_blob_bytes
from storage.page_auth import PageAuth, read_secret
from storage.remote import Oversize

log = logging.getLogger(__name__)

try:  # the real interface when SGLang is installed; the same methods either way
    from sglang.srt.mem_cache.hicache_storage import HiCacheStorage as _Base
except ImportError:  # pragma: no cover - depends on the install
    _Base = object


class RadixKVStorage(_Base):
    def __init__(self, storage_config: Any = None, kwargs: dict | None = None, **options) -> None:
        extra = dict(getattr(storage_config, "extra_config", None) or {})
        extra |= kwargs or {}
        extra |= options
        url = extra.get("remote_url")
        if not url:
            raise ValueError("the radixkv backend needs 'remote_url' in its extra config")
        secret = read_secret(extra.get("secret_file"))  # else $RADIXKV_REMOTE_SECRET
        self.auth = PageAuth(secret, str(extra.get("tenant", ""))) if secret else None
        self.namespace = self.namespace_of(storage_config, extra, self.auth)
        self.timeout_s = float(extra.get("timeout_s", 10.0))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="radixkv-sglang-io", daemon=True
        )
        self._thread.start()
        self._store = self._call(self._open(url), guarded=False)
        self.breaker = CircuitBreaker(self._store.describe())

    @staticmethod
    def namespace_of(storage_config: Any, extra: dict, auth: PageAuth | None = None) -> bytes:
        """What a stored page's bytes depend on: the model, which shard of the KV this rank holds
        (tensor, pipeline and context parallel coordinates; MLA ranks all hold the same latent
        cache), the host page layout, the tenant and the deployment's key (`secret_file`).
        Data-parallel replicas share entries."""

        def get(name: str, default: Any) -> Any:
            return getattr(storage_config, name, default)

        model = get("model_name", None) or extra.get("model_name", "")
        tp = (0, 1) if get("is_mla_model", False) else (get("tp_rank", 0), get("tp_size", 1))
        shard = (
            tp,
            (get("pp_rank", 0), get("pp_size", 1)),
            (get("attn_cp_rank", 0), get("attn_cp_size", 1)),
            (get("dcp_rank", 0), get("dcp_size", 1)),
            "page_first" if get("is_page_first_layout", False) else "layer_first",
        )
        key_id = auth.key_id.hex() if auth is not None else "unauthenticated"
        seed = f"sglang|{model}|{shard}|{extra.get('tenant', '')}|{key_id}"
        return hashlib.blake2b(seed.encode(), digest_size=16).digest()

    @staticmethod
    async def _open(url: str):
        return open_store(url)  # inside the loop: async clients bind to it

    def _call(self, coro, guarded: bool = True):
        permit = self.breaker.allow() if guarded else None
        if guarded and permit is None:
            coro.close()
            return None
        fut = asyncio.run_coroutine_threadsafe(asyncio.wait_for(coro, self.timeout_s), self._loop)
        try:
            result = fut.result()
        except Exception as err:
            if permit is None:
                raise
            self.breaker.failure(permit, err)
            return None
        if permit is not None:
            self.breaker.success(permit)
        return result

    def _key(self, key: str) -> bytes:
        return hashlib.blake2b(self.namespace + key.encode(), digest_size=16).digest()

    # ---- writes --------------------------------------------------------------------------------
    def _frame(self, key: str, value: torch.Tensor) -> tuple[str, bytes]:
        value = value.detach().contiguous().cpu()
        payload = memoryview(value.view(torch.uint8).numpy()).cast("B")
        k = self._key(key)
        blob = encode_page(
            payload,
            namespace=self.namespace,
            key=k,
            shape=tuple(value.shape),
            dtype=value.dtype,
            auth=self.auth,
        )
        return k.hex(), blob

    def batch_set(self, keys, values=None, target_locations=None, target_sizes=None) -> bool:
        values = values if values is not None else target_locations
        if values is None or len(values) != len(keys):
            raise ValueError("batch_set needs one tensor per key")
        items = [self._frame(k, v) for k, v in zip(keys, values, strict=True)]
        ok = self._call(self._store.put(items))
        return bool(ok) and all(ok)

    def set(self, key, value=None, target_location=None, target_sizes=None) -> bool:
        return self.batch_set([key], [value if value is not None else target_location])

    # ---- reads ---------------------------------------------------------------------------------
    def batch_get(self, keys, target_locations=None, target_sizes=None):
        """Fills each target tensor from the store; per key the tensor, or None for a miss (absent,
        unreachable, or failing verification against the target's shape and dtype)."""
        if target_locations is None or len(target_locations) != len(keys):
            raise ValueError("batch_get needs one target tensor per key")
        ks = [self._key(k) for k in keys]
        bound = max(max_blob_bytes(t.numel() * t.element_size(), t.dim()) for t in target_locations)
        blobs = self._call(self._store.get([k.hex() for k in ks], bound)) or [None] * len(keys)
        out, bad = [], []
        for k, blob, target in zip(ks, blobs, target_locations, strict=True):
            if blob is None:
                out.append(None)
                continue
            try:
                if isinstance(blob, Oversize):
                    raise PageFormatError("entry larger than a page")
                payload = decode_page(
                    blob,
                    namespace=self.namespace,
                    key=k,
                    shape=tuple(target.shape),
                    dtype=target.dtype,
                    auth=self.auth,
                )
            except PageFormatError as err:
                log.warning("sglang page %s rejected (%s): a miss", k.hex(), err.reason)
                self._store.stats.count_corrupt(err.reason)
                bad.append(k.hex())
                out.append(None)
                continue
            src = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            target.view(-1).view(torch.uint8).copy_(src)
            out.append(target)
        if bad:
            self._call(self._store.delete(bad))
        return out

    def get(self, key, target_location=None, target_sizes=None):
        if target_location is None:
            raise ValueError("get needs a target tensor (shape and dtype are verified against it)")
        return self.batch_get([key], [target_location])[0]

    def batch_exists(self, keys, extra_info=None) -> int:
        """How many keys, from the first, the store holds."""
        found = self._call(self._store.exists([self._key(k).hex() for k in keys])) or []
        n = 0
        for present in found:
            if not present:
                break
            n += 1
        return n

    def exists(self, key) -> bool:
        return self.batch_exists([key]) == 1

    def clear(self) -> None:
        """A shared tier is never wiped by one client; entries age out by the store's policy."""
        log.info("radixkv backend: clear() leaves the shared store as it is")

    def get_stats(self):
        return {**self._store.stats.as_dict(), **self.breaker.as_dict()}

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._store.close(), self._loop).result(self.timeout_s)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
