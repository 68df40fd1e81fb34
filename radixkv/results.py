"""What the library's generate, chat and stream return (`radixkv.GenerationResult`,
`radixkv.StreamChunk`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class GenerationResult:
    token_ids: list[int]
    text: str
    prompt_tokens: int
    cached_tokens: int
    cached_tokens_by_tier: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    # a chat's tool calls (OpenAI's shape: id, type, function {name, arguments}) and its
    # structured output parsed (a response_format's JSON), where it asked for them
    tool_calls: list[dict] = field(default_factory=list)
    parsed: Any = None


@dataclass
class StreamChunk:
    token_ids: list[int]
    text: str  # the new text since the previous chunk
    finish_reason: str | None = None
    tool_calls: list[dict] = field(default_factory=list)  # a chat's calls, on its last chunk
    prompt_tokens: int = 0  # on a chat's last chunk: its prompt, and the part of it cached
    cached_tokens: int = 0
