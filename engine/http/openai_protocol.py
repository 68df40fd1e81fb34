"""Request bodies of the HTTP API, validated strictly: a wrong type is an error, never coerced.

OpenAI-compatible completions and chat completions (`engine/http/native_protocol.py` holds the
native `/generate`). Fields a client may send that change nothing here (`stream_options`
without usage, ...) are accepted and ignored; a field that would change the
output and is not supported (`suffix`, `echo` with `logprobs`) is rejected by name.

Every rule is a field constraint, so the OpenAPI document generated from these models states
exactly what is validated (`engine/http/api_schema.py` adds the bounds that depend on the served
model: its name and its vocabulary).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictBool, StrictStr, WithJsonSchema, model_validator

from engine.http.field_types import (
    MAX_CHOICES,
    Body,
    Int,
    MaxTokens,
    NonEmptyStr,
    OnlyNull,
    Seed,
    Stop,
    Temperature,
    TokenId,
    TopP,
    whole,
)


class StreamOptions(Body):
    include_usage: bool = False


class _OpenAISampling(Body):
    model: StrictStr = Field(description="the served model's name (GET /v1/models)")
    # None (not given): the model's generation defaults (EngineConfig.generation_config)
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: whole(ge=0, description="0: no limit (an extension)") | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    stop_token_ids: list[Int] | None = None  # extension
    ignore_eos: bool = False  # extension
    user: Annotated[StrictStr, Field(max_length=256)] | None = Field(
        None,
        description="an end user's id; it names the conversation for the cache's prefetcher "
        "unless the X-Session-ID header does",
    )
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: whole(ge=1, le=MAX_CHOICES, description="choices per prompt (sharing its prefill)") = 1
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] = 0.0
    logit_bias: (
        Annotated[
            dict[
                Annotated[StrictStr, Field(pattern=r"^[0-9]{1,9}$")],
                Annotated[float, Field(ge=-100, le=100)],
            ],
            Field(max_length=300),
            WithJsonSchema(
                {  # stated so that schema tools generate what the validator takes
                    "type": "object",
                    "patternProperties": {
                        "^[0-9]{1,9}$": {"type": "number", "minimum": -100, "maximum": 100}
                    },
                    "additionalProperties": False,
                    "maxProperties": 300,
                    "description": "token id (as a string) -> bias added to its logit",
                }
            ),
        ]
        | None
    ) = None
    min_tokens: whole(ge=0, description="EOS and stop tokens banned before this many") = 0

    def sampling(self, max_tokens: int) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": tuple(stop),
            "stop_token_ids": tuple(self.stop_token_ids or ()),
            "ignore_eos": self.ignore_eos,
            "presence_penalty": self.presence_penalty,
            "frequency_penalty": self.frequency_penalty,
            "logit_bias": {int(k): v for k, v in (self.logit_bias or {}).items()},
            "min_tokens": self.min_tokens,
        }

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def choice_sampling(self, sampling: dict, choice: int) -> dict:
        """Choice `choice`'s sampling: with a seed, seed + choice (else the n would match)."""
        seed = sampling["seed"]
        return sampling | {"seed": None if seed is None else seed + choice}


class JSONSchemaFormat(Body):
    name: StrictStr = "response"
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON Schema to follow")
    strict: bool | None = None
    description: StrictStr | None = None


class ResponseFormat(Body):
    """`text` (no constraint), `json_object` (any JSON object) or `json_schema` (one that
    validates): enforced token by token, so the output always parses."""

    model_config = ConfigDict(
        json_schema_extra={  # json_schema comes with type json_schema, and only then
            "if": {"properties": {"type": {"const": "json_schema"}}},
            "then": {
                "required": ["json_schema"],
                "properties": {"json_schema": {"type": "object"}},
            },
            "else": {"properties": {"json_schema": {"type": "null"}}},
        }
    )

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("json_schema is given with type json_schema, and only then")
        return self

    def grammar(self) -> tuple[str, str] | None:
        if self.type == "json_object":
            return ("json_object", "")
        if self.type == "json_schema":
            return ("json_schema", json.dumps(self.json_schema.schema_))
        return None


TokenPrompt = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(_OpenAISampling):
    prompt: (
        NonEmptyStr
        | TokenPrompt
        | Annotated[list[NonEmptyStr], Field(min_length=1, max_length=MAX_CHOICES)]
        | Annotated[list[TokenPrompt], Field(min_length=1, max_length=MAX_CHOICES)]
    )
    max_tokens: MaxTokens | None = 16  # OpenAI's default for completions
    echo: StrictBool = Field(False, description="the prompt's text before the completion's")
    suffix: OnlyNull = Field(None, description="not supported (no fill-in-the-middle): null only")
    logprobs: whole(ge=0, le=20, description="the chosen token's and the N likeliest") | None = None

    def sampling(self, max_tokens: int) -> dict:
        return super().sampling(max_tokens) | {"logprobs": self.logprobs}

    def prompts(self) -> list:
        """Each prompt: a string or a list of token ids."""
        one = isinstance(self.prompt, str) or isinstance(self.prompt[0], int)
        return [self.prompt] if one else list(self.prompt)

    @model_validator(mode="after")
    def _choices_bounded(self):
        if self.echo and self.logprobs is not None:
            raise ValueError("echo with logprobs is not supported (no prompt log probabilities)")
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise ValueError(f"at most {MAX_CHOICES} choices (prompts x n) per call")
        return self


class TextPart(Body):
    type: Literal["text"]
    text: StrictStr


class FunctionCall(Body):
    name: NonEmptyStr
    arguments: StrictStr = Field(description="the arguments, as JSON text")


class AssistantToolCall(Body):
    id: StrictStr
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[TextPart] | None = None
    tool_calls: list[AssistantToolCall] | None = None  # an assistant turn's calls
    tool_call_id: StrictStr | None = None  # a tool result: the call it answers
    name: StrictStr | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


FunctionName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9_.\-]{1,64}$")]


class FunctionSpec(Body):
    name: FunctionName
    description: StrictStr | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON Schema of the arguments")


class ToolSpec(Body):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(Body):
    name: FunctionName


class NamedToolChoice(Body):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_OpenAISampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: MaxTokens | None = None  # None: up to the end of the context
    max_completion_tokens: MaxTokens | None = None
    logprobs: StrictBool | None = None
    top_logprobs: whole(ge=0, le=20) | None = None
    response_format: ResponseFormat | None = None
    tools: Annotated[list[ToolSpec], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None  # several calls may come back either way
    # the legacy names for the same (functions: tools; function_call: tool_choice)
    functions: Annotated[list[FunctionSpec], Field(max_length=128)] | None = None
    function_call: Literal["none", "auto"] | NamedFunction | None = None

    @model_validator(mode="after")
    def _top_needs_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    @model_validator(mode="after")
    def _tools_known(self):
        if self.tools is not None and self.functions is not None:
            raise ValueError("give tools or the legacy functions, not both")
        names = {t["function"]["name"] for t in self.offered_tools() or ()}
        choice = self.tool_choice_name
        if choice is not None and choice not in ("none", "auto", "required"):
            if choice not in names:
                raise ValueError(f"tool_choice names {choice!r}, which is not among the tools")
        elif choice == "required" and not names:
            raise ValueError("tool_choice is required but no tools are given")
        return self

    def offered_tools(self) -> list[dict] | None:
        """The tools in OpenAI's `tools` shape (legacy `functions` converted), or None."""
        if self.tools:
            return [t.model_dump(exclude_none=True) for t in self.tools]
        if self.functions:
            return [
                {"type": "function", "function": f.model_dump(exclude_none=True)}
                for f in self.functions
            ]
        return None

    @property
    def tool_choice_name(self) -> str | None:
        """none, auto, required, a function's name, or None (auto when tools are given)."""
        choice = self.tool_choice if self.tool_choice is not None else self.function_call
        if isinstance(choice, NamedToolChoice):
            return choice.function.name
        if isinstance(choice, NamedFunction):
            return choice.name
        return choice

    def sampling(self, max_tokens: int) -> dict:
        grammar = self.response_format.grammar() if self.response_format else None
        logprobs = (self.top_logprobs or 0) if self.logprobs else None
        return super().sampling(max_tokens) | {"grammar": grammar, "logprobs": logprobs}

    def chat_messages(self) -> list[dict]:
        out = []
        for m in self.messages:
            msg = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            if m.tool_calls:
                msg["tool_calls"] = [c.model_dump() for c in m.tool_calls]
                msg["content"] = m.text() or None
            if m.tool_call_id is not None:
                msg["tool_call_id"] = m.tool_call_id
            if m.name is not None:
                msg["name"] = m.name
            out.append(msg)
        return out

    @property
    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )
