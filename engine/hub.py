"""Hugging Face Hub model ids: `--model org/name` resolves to a local snapshot directory.

The local Hugging Face cache (HF_HUB_CACHE / HF_HOME, as the hub library reads them) is tried
first, so a machine that is offline serves what it has; otherwise the weights, config and
tokenizer files are downloaded. An id found in neither place is a ValueError naming it.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.model_config import PRESETS

# the files a model directory needs: configs, weights, tokenizer
SNAPSHOT_FILES = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt"]
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def looks_like_hub_id(model: str) -> bool:
    """`org/name`, and neither an existing path nor a preset."""
    return bool(_HUB_ID.match(model)) and model not in PRESETS and not Path(model).exists()


def resolve_model(model: str | None) -> str | None:
    """A Hub id as its local snapshot directory; any other model as given."""
    if model is None or not looks_like_hub_id(model):
        return model
    from huggingface_hub import constants, snapshot_download

    try:
        return snapshot_download(model, local_files_only=True, allow_patterns=SNAPSHOT_FILES)
    except Exception:  # not in the local cache: download it (unless told to stay offline)
        pass
    try:
        return snapshot_download(model, allow_patterns=SNAPSHOT_FILES)
    except Exception as err:
        raise ValueError(
            f"model {model!r} is not a local file or directory nor a preset, is not in the "
            f"Hugging Face cache ({constants.HF_HUB_CACHE}), and could not be downloaded "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no detail'})"
        ) from None
