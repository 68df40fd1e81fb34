"""The OpenAPI document, made to tell the truth: the response bodies each route sends, every
error status it can answer with (and the error body's shape) instead of FastAPI's 422 that this
server never sends, and the bounds that depend on the served model: its name and its vocabulary.
The request schemas come from `engine.http.openai_protocol`, whose every rule is a field
constraint. A fuzz test (`tests/test_api_fuzz.py`) holds the server to this document.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict

from engine.http.common import ADMIN_PATHS


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")  # documents the fields a client can rely on


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str  # e.g. invalid_request, context_length_exceeded, model_not_found


class ErrorResponse(BaseModel):
    """Every error, in OpenAI's shape."""

    error: ErrorDetail


class PromptDetails(_Open):
    cached_tokens: int
    cached_tokens_by_tier: dict[str, int]


class Usage(_Open):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptDetails


FinishReason = Literal["stop", "length", "tool_calls"]


class CalledFunction(_Open):
    name: str
    arguments: str  # JSON text


class ToolCallOut(_Open):
    id: str
    type: Literal["function"]
    function: CalledFunction


class ToolCallDelta(ToolCallOut):
    index: int


class CompletionChoice(_Open):
    index: int
    text: str
    logprobs: dict[str, Any] | None  # tokens, token_logprobs, top_logprobs, text_offset
    finish_reason: FinishReason | None


class CompletionResponse(_Open):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class AssistantMessage(_Open):
    role: Literal["assistant"]
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class ChatChoice(_Open):
    index: int
    message: AssistantMessage
    logprobs: dict[str, Any] | None  # {"content": [{token, logprob, bytes, top_logprobs}]}
    finish_reason: FinishReason | None


class ChatCompletionResponse(_Open):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChunk(_Open):
    """One streamed event of /v1/completions; the last (with stream_options.include_usage) has
    no choices and the usage."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ChatDelta(_Open):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(_Open):
    index: int
    delta: ChatDelta
    logprobs: dict[str, Any] | None
    finish_reason: FinishReason | None


class ChatCompletionChunk(_Open):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class StreamError(BaseModel):
    """The last event of a stream the engine failed after its status line had gone."""

    error: dict[str, Any]


class GenerateMeta(_Open):
    id: str
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    cached_tokens_by_tier: dict[str, int]
    finish_reason: dict[str, str] | None
    e2e_latency: float


class GenerateResponse(_Open):
    text: str
    output_ids: list[int]
    meta_info: GenerateMeta


class ModelCard(_Open):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    max_model_len: int


class ModelList(_Open):
    object: Literal["list"]
    data: list[ModelCard]


class Health(_Open):
    status: Literal["ok"]
    model: str
    remote_tier: Literal["off", "ok", "degraded"]


# The body of each route's 200 (None: free-form JSON); streamed routes also send SSE
_OK_BODY: dict[tuple[str, str], type[BaseModel] | None] = {
    ("post", "/v1/completions"): CompletionResponse,
    ("post", "/v1/chat/completions"): ChatCompletionResponse,
    ("post", "/generate"): GenerateResponse,
    ("get", "/v1/models"): ModelList,
    ("get", "/v1/models/{model_id}"): ModelCard,
    ("get", "/health"): Health,
}
# Each streamed event's JSON data (then a final `data: [DONE]`)
_STREAM_EVENT: dict[str, type[BaseModel]] = {
    "/v1/completions": CompletionChunk,
    "/v1/chat/completions": ChatCompletionChunk,
    "/generate": GenerateResponse,  # cumulative, as SGLang streams
}
_ERRORS = {
    400: "invalid request: the body is not valid JSON, breaks the schema, or the prompt plus "
    "max_tokens does not fit the context or the device tier (code context_length_exceeded)",
    401: "missing or wrong API key (the admin key on admin routes)",
    403: "an admin route on a server whose API key guards inference but no admin key is set",
    404: "the model named is not the one served (code model_not_found)",
    408: "the request body did not arrive within the server's deadline",
    413: "the request body is larger than the server takes (--max-body-mb)",
    500: "the server's own failure (its log holds the error id of the message)",
    503: "the engine thread is not running",
}


def _statuses(method: str, path: str, api_key: bool) -> list[int]:
    out = [500]
    if method == "post":
        out += [400, 408, 413]
    if (path.startswith("/v1/") and method == "post") or path == "/v1/models/{model_id}":
        out.append(404)
    if path == "/health":
        out.append(503)
    elif api_key:
        out.append(401)
        if path in ADMIN_PATHS:
            out.append(403)
    return sorted(out)


def install_openapi(app: FastAPI, *, model_name: str, vocab_size: int, api_key: bool) -> None:
    """Replace the app's OpenAPI generator with one that states what the server really does."""

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = get_openapi(title=app.title, version=app.version, routes=app.routes)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        documented = (
            ErrorResponse,
            StreamError,
            *filter(None, _OK_BODY.values()),
            *_STREAM_EVENT.values(),
        )
        for model in documented:
            schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas[model.__name__] = schema
        for name in ("HTTPValidationError", "ValidationError"):  # never sent: errors are 400s
            schemas.pop(name, None)
        for path, ops in doc["paths"].items():
            for method, op in ops.items():
                responses = op.setdefault("responses", {})
                responses.pop("422", None)
                body = _OK_BODY.get((method, path))
                ok = {"schema": {"$ref": f"#/components/schemas/{body.__name__}"} if body else {}}
                content = {"application/json": ok}
                if path in _STREAM_EVENT:
                    content["text/event-stream"] = {"schema": _sse_event(_STREAM_EVENT[path])}
                if path == "/metrics":
                    content = {"text/plain": {"schema": {"type": "string"}}}
                responses["200"] = {"description": "success", "content": content}
                for status in _statuses(method, path, api_key):
                    responses[str(status)] = {
                        "description": _ERRORS[status],
                        "content": {
                            "application/json": {
                                "schema": {"$ref": "#/components/schemas/ErrorResponse"}
                            }
                        },
                    }
        _bound_to_model(schemas, model_name, vocab_size)
        app.openapi_schema = doc
        return doc

    app.openapi = openapi


def _sse_event(data: type[BaseModel]) -> dict:
    """One server-sent event (the way OpenAPI before 3.2 describes a stream): its data is a
    JSON `data` object, an error, or the closing `[DONE]`."""
    json_data = {
        "contentMediaType": "application/json",
        "contentSchema": {
            "anyOf": [
                {"$ref": f"#/components/schemas/{data.__name__}"},
                {"$ref": "#/components/schemas/StreamError"},
            ]
        },
    }
    return {
        "type": "object",
        "required": ["data"],
        "properties": {
            "event": {"const": "message"},
            "data": {"anyOf": [{"type": "string", "const": "[DONE]"}, json_data]},
        },
    }


def _bound_to_model(schemas: dict, model_name: str, vocab_size: int) -> None:
    """The served model's name as the one `model`, and token ids below its vocabulary size.
    (Whether prompt plus max_tokens fits the context depends on the prompt's token count, which
    no JSON schema can state: the 400 says it.)"""
    for name in ("CompletionRequest", "ChatCompletionRequest"):
        schemas[name]["properties"]["model"]["enum"] = [model_name]
    for node in _walk(schemas):
        if node.pop("x-token-id", False):
            node["maximum"] = vocab_size - 1


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)
