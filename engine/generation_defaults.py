"""The sampling a server applies to what a request leaves out: the model's own generation
settings (as vLLM does), not OpenAI's temperature 1.0 that small instruct models ramble at.

`EngineConfig.generation_config`: `auto` (a Hugging Face directory's generation_config.json;
for the default model, SmolLM2-Instruct, the settings its model card's example uses), `none`
(OpenAI's defaults), or a JSON object of overrides such as '{"temperature": 0.7}'.
"""

from __future__ import annotations

import json
from pathlib import Path

OPENAI = {"temperature": 1.0, "top_p": 1.0, "top_k": 0}
KEYS = tuple(OPENAI)
DEFAULT_MODEL = {"temperature": 0.2, "top_p": 0.9}


def parse_overrides(setting: str) -> dict:
    """The overrides a JSON `setting` names; ValueError saying what is wrong."""
    try:
        value = json.loads(setting)
    except ValueError:
        value = None
    if not isinstance(value, dict) or set(value) - set(KEYS):
        raise ValueError(
            f"must be auto, none or a JSON object of {', '.join(KEYS)}, got {setting!r}"
        )
    from engine.sampling import SamplingParams  # the same rules a request's values follow

    SamplingParams(**value)
    return value


def generation_defaults(setting: str, model: str | None) -> dict:
    """temperature, top_p and top_k for requests that leave them out."""
    if setting == "none":
        return dict(OPENAI)
    if setting != "auto":
        return OPENAI | parse_overrides(setting)
    if model is None:
        return OPENAI | DEFAULT_MODEL
    path = Path(model) / "generation_config.json"
    if not path.is_file():
        return dict(OPENAI)
    saved = json.loads(path.read_text())
    return OPENAI | {k: saved[k] for k in KEYS if isinstance(saved.get(k), int | float)}
