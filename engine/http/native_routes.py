"""The native route: POST /generate, token ids or text in, SGLang's field names out."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from engine.engine_loop import RequestOutput
from engine.http.common import ServingContext, sse, stream_error
from engine.http.native_protocol import GenerateRequest


def native_router(ctx: ServingContext) -> APIRouter:
    router = APIRouter()

    @router.post("/generate")
    async def generate(body: GenerateRequest, http: Request):
        prompt = body.input_ids if body.input_ids is not None else body.text

        def prepare():  # tokenizing, a grammar's compilation: off the event loop
            return ctx.make_request(ctx.encode(prompt), body.sampling_params.sampling())

        req = await asyncio.to_thread(prepare)
        rid = body.rid or uuid.uuid4().hex

        def result(out_ids: list[int], text: str, out: RequestOutput) -> dict:
            meta = {
                "id": rid,
                "prompt_tokens": out.prompt_tokens,
                "completion_tokens": out.num_output_tokens,
                "cached_tokens": out.cached_tokens,
                "cached_tokens_by_tier": out.cached_by_tier,
                "finish_reason": {"type": out.finish_reason} if out.finish_reason else None,
                "e2e_latency": time.perf_counter() - req.arrival,
            }
            return {"text": text, "output_ids": list(out_ids), "meta_info": meta}

        if not body.stream:
            out_ids, out = await ctx.run_to_end(http, req)
            return result(out_ids, out.text or "", out)

        async def events() -> AsyncIterator[bytes]:
            stream, ids, text = ctx.text_stream(req), [], ""
            async for out in ctx.loop.generate(req):
                if out.finish_reason == "error":
                    yield stream_error(out)
                    return
                ids.extend(out.new_token_ids)
                text += stream.delta(ids, out)
                yield sse(result(ids, text, out))  # SGLang streams the cumulative output
            yield sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    return router
