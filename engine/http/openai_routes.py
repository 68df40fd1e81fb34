"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (SSE or not)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from engine.http.common import (
    APIError,
    ServingContext,
    sse,
    stream_error,
    usage,
)
from engine.openai_protocol import ChatCompletionRequest, CompletionRequest


def openai_router(ctx: ServingContext) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": ctx.model_name,
                    "object": "model",
                    "created": ctx.created,
                    "owned_by": "radixkv",
                    "max_model_len": ctx.core.context_length,
                }
            ],
        }

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        ctx.check_model(body.model)
        ids = ctx.encode(body.prompt)
        req = ctx.make_request(ids, body.sampling(ctx.max_tokens_for(len(ids), body.max_tokens)))
        rid, now = f"cmpl-{uuid.uuid4().hex}", _now()

        def chunk(text: str, finish: str | None) -> dict:
            return {
                "id": rid,
                "object": "text_completion",
                "created": now,
                "model": ctx.model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if not body.stream:
            _, out = await ctx.run_to_end(http, req)
            return chunk(out.text or "", out.finish_reason) | {"usage": usage(out)}
        return _streaming(ctx, req, chunk, body.include_usage, first=None)

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        ctx.check_model(body.model)
        tok = ctx.core.tokenizer
        if tok is None or not tok.chat_template:
            raise APIError(
                400, "this model has no chat template: use /v1/completions", "invalid_request_error"
            )
        try:
            prompt = tok.apply_chat_template(body.chat_messages())
        except ValueError as err:
            raise APIError(400, str(err), "invalid_request_error", "messages") from err
        ids = ctx.encode(prompt)
        sampling = body.sampling(ctx.max_tokens_for(len(ids), body.requested_max_tokens))
        req = ctx.make_request(ids, sampling)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", _now()

        if not body.stream:
            _, out = await ctx.run_to_end(http, req)
            message = {"role": "assistant", "content": out.text or ""}
            return {
                "id": rid,
                "object": "chat.completion",
                "created": now,
                "model": ctx.model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "logprobs": None,
                        "finish_reason": out.finish_reason,
                    }
                ],
                "usage": usage(out),
            }

        def chunk(text: str | None, finish: str | None, role: bool = False) -> dict:
            delta = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": now,
                "model": ctx.model_name,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        first = chunk(None, None, role=True)
        return _streaming(ctx, req, chunk, body.include_usage, first=first)

    return router


def _now() -> int:
    return int(time.time())


def _streaming(
    ctx: ServingContext, req, chunk: Callable, include_usage: bool, first: dict | None
) -> StreamingResponse:
    async def events() -> AsyncIterator[bytes]:
        if first is not None:
            yield sse(first)
        stream, ids = ctx.text_stream(req), []
        async for out in ctx.loop.generate(req):
            if out.finish_reason == "error":
                yield stream_error(out)
                return
            ids.extend(out.new_token_ids)
            text = stream.delta(ids, out)
            if text or out.finish_reason is not None:
                yield sse(chunk(text, out.finish_reason))
            if out.finish_reason is not None:
                if include_usage:
                    last = chunk("", None)
                    last["choices"] = []
                    yield sse(last | {"usage": usage(out)})
                yield sse("[DONE]")

    return StreamingResponse(events(), media_type="text/event-stream")
