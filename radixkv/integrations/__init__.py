"""Adapters that embed radixkv in agent frameworks, each an optional extra."""

from __future__ import annotations

import json


def call_arguments(call: dict) -> dict:
    """An OpenAI-shaped tool call's arguments as a dict ({} where they do not parse to one)."""
    try:
        args = json.loads(call["function"]["arguments"] or "{}")
    except ValueError:
        return {}
    return args if isinstance(args, dict) else {}
