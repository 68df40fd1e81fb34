"""The page codec: a self-checking binary header plus the page's raw bytes.

Layout (little endian):
    [0:4)    magic b"RKVP"
    [4:6)    format version (u16): 1 plain, 2 authenticated
    [6:7)    dtype code (u8, storage.layout.DTYPE_CODES)
    [7:8)    ndim (u8)
    [8:24)   namespace digest (16 bytes)
    [24:40)  page key (16 bytes): binds the entry to the slot it was stored under
    [40:48)  payload length in bytes (u64)
    [48:C)   version 1: crc32 (4 bytes); version 2: HMAC-SHA256 (32 bytes,
             `storage.page_auth`), both over bytes [0:48) + dims + payload
    [C:C+4*ndim)  dims (u32 each)
    then the payload.
A reader with a secret takes only version 2 pages whose tag its key makes, and checks the tag
before any other field; a reader without one takes only version 1. Nothing here is pickled; a
blob failing any check raises PageFormatError and must be a miss.
"""

from __future__ import annotations

import struct
import zlib

import torch

from storage.layout import CODE_DTYPES, DTYPE_CODES
from storage.page_auth import TAG_BYTES, PageAuth

MAGIC = b"RKVP"
VERSION = 1  # plain: CRC32
VERSION_AUTH = 2  # authenticated: HMAC-SHA256
_FIXED = struct.Struct("<4sHBB16s16sQ")  # 48 bytes
_CRC = struct.Struct("<I")
HEADER_FIXED_BYTES = _FIXED.size + _CRC.size  # 52
AUTH_FAILED = "authentication failed"


def max_blob_bytes(payload_bytes: int, ndim: int) -> int:
    """The largest blob a page of `payload_bytes` can be: what a store reads at most."""
    return _FIXED.size + TAG_BYTES + 4 * ndim + payload_bytes


class PageFormatError(ValueError):
    """A stored page failed verification (truncated, corrupt, or not ours)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode_page(
    payload: memoryview | bytes,
    *,
    namespace: bytes,
    key: bytes,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    auth: PageAuth | None = None,
) -> bytes:
    """Frame one page's raw bytes with a header that `decode_page` verifies; with `auth`, an
    authenticated (version 2) page."""
    if len(namespace) != 16 or len(key) != 16:
        raise ValueError("namespace and key must be 16-byte digests")
    version = VERSION if auth is None else VERSION_AUTH
    fixed = _FIXED.pack(
        MAGIC, version, DTYPE_CODES[dtype], len(shape), namespace, key, len(payload)
    )
    dims = struct.pack(f"<{len(shape)}I", *shape)
    if auth is not None:
        return b"".join((fixed, auth.tag(fixed, dims, payload), dims, payload))
    crc = zlib.crc32(payload, zlib.crc32(dims, zlib.crc32(fixed)))
    return b"".join((fixed, _CRC.pack(crc), dims, payload))


def decode_page(
    blob: bytes | memoryview,
    *,
    namespace: bytes,
    key: bytes,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    auth: PageAuth | None = None,
) -> memoryview:
    """Verify a blob against what the reader expects and return its payload (a view into blob).
    With `auth`, only a page its key tagged passes, and the tag is checked first."""
    view = memoryview(blob)
    if len(view) < _FIXED.size:
        raise PageFormatError("truncated header")
    magic, version, dtype_code, ndim, ns, stored_key, nbytes = _FIXED.unpack_from(view, 0)
    if magic != MAGIC:
        raise PageFormatError("bad magic")
    if version not in (VERSION, VERSION_AUTH):
        raise PageFormatError(f"unsupported format version {version}")
    if auth is not None and version != VERSION_AUTH:
        raise PageFormatError("unauthenticated page (this engine requires a MAC)")
    if auth is None and version != VERSION:
        raise PageFormatError("authenticated page (this engine has no secret to check it)")
    check_end = _FIXED.size + (TAG_BYTES if auth is not None else _CRC.size)
    dims_end = check_end + 4 * ndim
    if len(view) != dims_end + nbytes:
        raise PageFormatError(f"length {len(view)} does not match header ({dims_end + nbytes})")
    fixed, check = view[: _FIXED.size], view[_FIXED.size : check_end]
    dims, payload = view[check_end:dims_end], view[dims_end:]
    if auth is not None:
        if not auth.verify(check, fixed, dims, payload):
            raise PageFormatError(AUTH_FAILED)
    elif zlib.crc32(payload, zlib.crc32(dims, zlib.crc32(fixed))) != _CRC.unpack(check)[0]:
        raise PageFormatError("checksum mismatch")
    if ns != namespace:
        raise PageFormatError("namespace mismatch")
    if stored_key != key:
        raise PageFormatError("key mismatch")
    if CODE_DTYPES.get(dtype_code) != dtype:
        raise PageFormatError(f"dtype mismatch (stored code {dtype_code})")
    if tuple(struct.unpack(f"<{ndim}I", dims)) != tuple(shape):
        raise PageFormatError("shape mismatch")
    return payload
