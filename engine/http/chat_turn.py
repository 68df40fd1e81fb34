"""One chat turn as agents send it, shared by the server and the library (`radixkv.Engine.chat`):
OpenAI's request shape in (messages, tools, tool_choice, response_format, sampling), the prompt's
token ids, the sampling options with the grammar a forced call or a response format needs, and
the reply read back (content, parsed tool calls, parsed structured output).

Bad input raises ValueError saying what is wrong (the server answers it as a 400).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from engine.http.openai_protocol import ChatCompletionRequest
from engine.http.tool_calling import ToolCalling
from engine.http.tools import render_ids


@dataclass
class ChatTurn:
    """A validated chat request, ready to run: `ids` and `sampling` make its request."""

    body: ChatCompletionRequest
    calling: ToolCalling
    ids: list[int]
    sampling: dict

    @classmethod
    def from_openai(cls, body: dict, core) -> ChatTurn:
        """From a request body in OpenAI's shape (the library's keyword arguments)."""
        try:
            parsed = ChatCompletionRequest.model_validate(body)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ()))
            raise ValueError(f"invalid chat request: {where}: {first.get('msg')}") from None
        return cls.prepare(parsed, core)

    @classmethod
    def prepare(cls, body: ChatCompletionRequest, core) -> ChatTurn:
        """Template the messages (with the tools offered), pick the sampling options and the
        grammar: a forced tool call's or the response format's, never both."""
        tok = core.tokenizer
        if tok is None or not tok.chat_template:
            raise ValueError("this model has no chat template: use a plain completion")
        calling = ToolCalling.of(body, tok, core.config.tool_call_parser)
        literal = not core.config.special_tokens_in_content
        ids = render_ids(tok, body.chat_messages(), calling.offered, literal_content=literal)
        requested = body.requested_max_tokens
        max_tokens = (
            requested if requested is not None else max(1, core.max_request_tokens - len(ids))
        )
        sampling = body.sampling(max_tokens)
        if calling.grammar is not None:
            if sampling["grammar"] is not None:
                raise ValueError(
                    "tool_choice required or named cannot be combined with response_format"
                )
            sampling["grammar"] = calling.grammar
        return cls(body, calling, ids, sampling)

    def reply(self, text: str) -> tuple[str | None, list[dict], Any]:
        """(content, tool calls in OpenAI's shape, the structured output parsed or None)."""
        content, calls = self.calling.parse(text)
        parsed = None
        fmt = self.body.response_format
        if fmt is not None and fmt.type in ("json_schema", "json_object") and content:
            try:
                parsed = json.loads(content)
            except ValueError:
                parsed = None  # cut by max_tokens before the grammar completed
        return content, [c.to_openai() for c in calls], parsed
