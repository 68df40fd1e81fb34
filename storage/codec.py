"""The page codec: a self-checking binary header plus the page's raw bytes.

Layout (little endian):
    [0:4)    magic b"RKVP"
    [4:6)    format version (u16)
    [6:7)    dtype code (u8, storage.layout.DTYPE_CODES)
    [7:8)    ndim (u8)
    [8:24)   namespace digest (16 bytes)
    [24:40)  page key (16 bytes): binds the entry to the slot it was stored under
    [40:48)  payload length in bytes (u64)
    [48:52)  crc32 over bytes [0:48) + dims + payload
    [52:52+4*ndim)  dims (u32 each)
    then the payload.
Nothing here is pickled; a blob failing any check raises PageFormatError and must be a miss.
"""

from __future__ import annotations

import struct
import zlib

import torch

from storage.layout import CODE_DTYPES, DTYPE_CODES

MAGIC = b"RKVP"
VERSION = 1
_FIXED = struct.Struct("<4sHBB16s16sQ")  # 48 bytes
_CRC = struct.Struct("<I")
HEADER_FIXED_BYTES = _FIXED.size + _CRC.size  # 52


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
) -> bytes:
    """Frame one page's raw bytes with a header that `decode_page` verifies."""
    if len(namespace) != 16 or len(key) != 16:
        raise ValueError("namespace and key must be 16-byte digests")
    fixed = _FIXED.pack(
        MAGIC, VERSION, DTYPE_CODES[dtype], len(shape), namespace, key, len(payload)
    )
    dims = struct.pack(f"<{len(shape)}I", *shape)
    crc = zlib.crc32(payload, zlib.crc32(dims, zlib.crc32(fixed)))
    return b"".join((fixed, _CRC.pack(crc), dims, payload))


def decode_page(
    blob: bytes | memoryview,
    *,
    namespace: bytes,
    key: bytes,
    shape: tuple[int, ...],
    dtype: torch.dtype,
) -> memoryview:
    """Verify a blob against what the reader expects and return its payload (a view into blob)."""
    view = memoryview(blob)
    if len(view) < HEADER_FIXED_BYTES:
        raise PageFormatError("truncated header")
    magic, version, dtype_code, ndim, ns, stored_key, nbytes = _FIXED.unpack_from(view, 0)
    if magic != MAGIC:
        raise PageFormatError("bad magic")
    if version != VERSION:
        raise PageFormatError(f"unsupported format version {version}")
    (crc,) = _CRC.unpack_from(view, _FIXED.size)
    dims_end = HEADER_FIXED_BYTES + 4 * ndim
    if len(view) != dims_end + nbytes:
        raise PageFormatError(f"length {len(view)} does not match header ({dims_end + nbytes})")
    dims = view[HEADER_FIXED_BYTES:dims_end]
    payload = view[dims_end:]
    if zlib.crc32(payload, zlib.crc32(dims, zlib.crc32(view[: _FIXED.size]))) != crc:
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
