"""The checkpoint's contents in the model's identity: a SHA-256 per weight file.

The cache namespace binds the shared tier to the model's identity, so that two checkpoints that
differ in one weight never read each other's KV. The config and the tensors' names and shapes
are not enough (a fine-tune has its base model's); the bytes are. Each file's SHA-256 is:

- free where the file is a link into a Hugging Face Hub cache: an LFS blob is named by it;
- else computed once (about 30 s for an 8B bf16 checkpoint at 0.56 GB/s on a 2-core CPU) and
  remembered under `$RADIXKV_CACHE/digests/`, keyed by the file's real path, size, inode and
  modification time, so later starts read it back in microseconds.

A digest record is trusted as far as the file system is: whoever can rewrite it can rewrite the
weights too.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path

from tqdm import tqdm

from storage.open_store import radixkv_cache_dir

log = logging.getLogger(__name__)

HUB_BLOB = re.compile(r"[0-9a-f]{64}")
CHUNK = 8 << 20
PROGRESS_BYTES = 256 << 20  # files at least this large show a progress bar while hashed


def digest_dir() -> Path:
    return radixkv_cache_dir() / "digests"


def _stamp(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a checkpoint file's bytes (hex): the Hub's blob name, a remembered
    record whose stamp still matches, or computed now and remembered."""
    real = Path(path).resolve()
    if real.parent.name == "blobs" and HUB_BLOB.fullmatch(real.name):
        return real.name  # a Hub LFS blob is stored under its own SHA-256
    st = real.stat()
    record = digest_dir() / (hashlib.blake2b(str(real).encode(), digest_size=16).hexdigest())
    try:
        saved = json.loads(record.read_text())
        if saved.get("path") == str(real) and saved.get("stamp") == _stamp(st):
            return saved["sha256"]
    except (OSError, ValueError, AttributeError):
        pass  # absent, unreadable or not ours: compute it
    h = hashlib.sha256()
    with (
        open(real, "rb") as f,
        tqdm(
            total=st.st_size,
            unit="B",
            unit_scale=True,
            desc=f"hashing {real.name} (once)",
            disable=st.st_size < PROGRESS_BYTES,
        ) as bar,
    ):
        while chunk := f.read(CHUNK):
            h.update(chunk)
            bar.update(len(chunk))
    sha = h.hexdigest()
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        tmp = record.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"path": str(real), "stamp": _stamp(st), "sha256": sha}))
        os.replace(tmp, record)
    except OSError as err:  # a read-only cache directory: hashed again next time
        log.warning("could not remember the digest of %s: %s", real, err)
    return sha


def checkpoint_digest(files: Iterable[str | Path]) -> str:
    """One digest over the files' names and SHA-256s (sorted by name)."""
    h = hashlib.sha256(b"radixkv-checkpoint-v1")
    for f in sorted(Path(p) for p in files):
        h.update(f"{f.name}={file_sha256(f)};".encode())
    return h.hexdigest()
