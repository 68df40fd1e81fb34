"""OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (SSE or not)."""

from __future__ import annotations

import asyncio
import copy
import time
import uuid
from collections.abc import AsyncIterator, Callable

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

from engine.http.chat_turn import ChatTurn
from engine.http.common import (
    APIError,
    ServingContext,
    sse,
    stream_error,
    usage,
)
from engine.http.logprobs import chat_logprobs, completion_logprobs
from engine.http.openai_protocol import ChatCompletionRequest, CompletionRequest
from engine.http.tool_calling import ToolCalling

SESSION_HEADERS = ("X-Session-ID", "X-SMG-Routing-Key")  # ours, then the SMG gateway's


def session_of(http: Request, body) -> str | None:
    """The conversation a request continues: the X-Session-ID header, else the routing key a
    gateway pins it by (SMG's X-SMG-Routing-Key), else the `user` field."""
    for name in SESSION_HEADERS:
        header = http.headers.get(name)
        if header is None:
            continue
        if not 0 < len(header) <= 256:
            raise APIError(
                400, f"{name} must be 1 to 256 characters", "invalid_request_error", "session"
            )
        return header
    return body.user or None  # an empty `user` names nothing


def openai_router(ctx: ServingContext) -> APIRouter:
    router = APIRouter()

    @router.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [_model_card(ctx)]}

    @router.get("/v1/models/{model_id:path}")
    async def model(model_id: str) -> dict:
        ctx.check_model(model_id)
        return _model_card(ctx)

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        ctx.check_model(body.model)
        session = session_of(http, body)

        def prepare() -> tuple[list, list[str]]:  # tokenizing, grammars: off the event loop
            reqs, echoed = [], []  # prompt by prompt, n choices each; the text each echoes
            for prompt in body.prompts():
                ids = ctx.encode(prompt)
                if body.echo:
                    echoed += [ctx.decode_prompt(prompt, ids)] * body.n
                sampling = body.sampling(ctx.max_tokens_for(len(ids), body.max_tokens))
                reqs += [
                    ctx.make_request(ids, body.choice_sampling(sampling, c), session)
                    for c in range(body.n)
                ]
            return reqs, echoed

        reqs, echoed = await asyncio.to_thread(prepare)
        rid, now = f"cmpl-{uuid.uuid4().hex}", _now()

        def chunk(text: str, finish: str | None, logprobs: dict | None = None) -> dict:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
            return {
                "id": rid,
                "object": "text_completion",
                "created": now,
                "model": ctx.model_name,
                "choices": [choice],
            }

        shape = completion_logprobs if body.logprobs is not None else None
        if not body.stream:
            results = await ctx.run_all(http, reqs)

            def answer() -> dict:  # n x top_logprobs choices: built off the event loop
                choices = [
                    {
                        "index": i,
                        "text": (echoed[i] if echoed else "") + (out.text or ""),
                        "logprobs": shape(ctx.core.tokenizer, *_all_logprobs(req))
                        if shape
                        else None,
                        "finish_reason": out.finish_reason,
                    }
                    for i, (req, (_, out)) in enumerate(zip(reqs, results, strict=True))
                ]
                whole = chunk("", None) | {"choices": choices}
                return whole | {"usage": usage(*(out for _, out in results), n=body.n)}

            return await asyncio.to_thread(answer)
        first = [chunk(e, None) for e in echoed] if echoed else None  # each choice's echo first
        return _streaming(
            ctx, reqs, chunk, body.include_usage, first=first, logprobs=shape, n=body.n
        )

    @router.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        ctx.check_model(body.model)
        tok = ctx.core.tokenizer
        if tok is None or not tok.chat_template:
            raise APIError(
                400, "this model has no chat template: use /v1/completions", "invalid_request_error"
            )
        session = session_of(http, body)

        def prepare() -> tuple[ToolCalling, list]:  # templating, grammars: off the event loop
            try:
                turn = ChatTurn.prepare(body, ctx.core)  # what the library's chat runs too
            except ValueError as err:
                param = "tool_choice" if "tool_choice" in str(err) else "messages"
                raise APIError(400, str(err), "invalid_request_error", param) from err
            reqs = [
                ctx.make_request(turn.ids, body.choice_sampling(turn.sampling, c), session)
                for c in range(body.n)
            ]
            return turn.calling, reqs

        calling, reqs = await asyncio.to_thread(prepare)
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", _now()

        shape = chat_logprobs if body.logprobs else None
        if not body.stream:
            results = await ctx.run_all(http, reqs)

            def answer() -> dict:  # n x top_logprobs choices: built off the event loop
                choices = []
                for i, (one, (_, out)) in enumerate(zip(reqs, results, strict=True)):
                    content, calls = calling.parse(out.text or "")
                    message = {"role": "assistant", "content": content}
                    finish = out.finish_reason
                    if calls:
                        message["tool_calls"] = [c.to_openai() for c in calls]
                        finish = "tool_calls"
                    lps = shape(ctx.core.tokenizer, *_all_logprobs(one)) if shape else None
                    choices.append(
                        {"index": i, "message": message, "logprobs": lps, "finish_reason": finish}
                    )
                return {
                    "id": rid,
                    "object": "chat.completion",
                    "created": now,
                    "model": ctx.model_name,
                    "choices": choices,
                    "usage": usage(*(out for _, out in results), n=body.n),
                }

            return await asyncio.to_thread(answer)

        def chunk(
            text: str | None,
            finish: str | None,
            logprobs: dict | None = None,
            role: bool = False,
            **delta,
        ) -> dict:
            delta = ({"role": "assistant", "content": ""} if role else {}) | delta
            if text:
                delta["content"] = text
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": now,
                "model": ctx.model_name,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
                ],
            }

        first = chunk(None, None, role=True)
        return _streaming(
            ctx, reqs, chunk, body.include_usage, first, calling=calling, logprobs=shape, n=body.n
        )

    return router


def _all_logprobs(req) -> tuple[list[int], list]:
    """A finished request's output tokens and their log probabilities (the engine thread is
    done with it)."""
    n = len(req.output_logprobs)
    return req.output_ids[:n], req.output_logprobs


def _model_card(ctx: ServingContext) -> dict:
    return {
        "id": ctx.model_name,
        "object": "model",
        "created": ctx.created,
        "owned_by": "radixkv",
        "max_model_len": ctx.core.context_length,
    }


def _now() -> int:
    return int(time.time())


def _streaming(
    ctx: ServingContext,
    reqs: list,
    chunk: Callable,
    include_usage: bool,
    first: dict | list[dict] | None,
    calling: ToolCalling | None = None,
    logprobs: Callable | None = None,
    n: int = 1,
) -> StreamingResponse:
    """SSE of a call's choices (one request each, prompt by prompt, `n` choices per prompt),
    interleaved as they produce text, each chunk carrying its choice's index; then the usage of
    all of them and [DONE]. As in `run_all`, choices sharing the first one's prompt start once it
    has its first token, so one prefill serves them all. `first`: the chunk each choice opens
    with (one for all, or one per choice)."""

    async def events() -> AsyncIterator[bytes]:
        queue: asyncio.Queue = asyncio.Queue()
        first_token = asyncio.Event()
        outs: list = [None] * len(reqs)

        async def run(i: int, req) -> None:
            try:
                if i and req.prompt_ids == reqs[0].prompt_ids:
                    await first_token.wait()
                opening = first[i] if isinstance(first, list) else first
                choice = _choice_events(ctx, req, chunk, opening, calling, logprobs)
                async for item in choice:
                    first_token.set()
                    if isinstance(item, dict):
                        for c in item["choices"]:
                            c["index"] = i
                    else:  # the finished output
                        outs[i] = item
                        if item.finish_reason == "error":
                            await queue.put((stream_error(item), True))
                            return
                        continue
                    await queue.put((sse(item), False))
            finally:
                first_token.set()  # a follower never waits on a choice that ended early
                await queue.put(None)

        tasks = [asyncio.ensure_future(run(i, r)) for i, r in enumerate(reqs)]
        try:
            running = len(tasks)
            while running:
                item = await queue.get()
                if item is None:
                    running -= 1
                    continue
                event, failed = item
                yield event
                if failed:
                    return  # the engine failed a choice: the stream ends with its error
            for t in tasks:
                t.result()  # re-raise what a choice's task raised
            if include_usage:
                last = chunk("", None)
                last["choices"] = []
                yield sse(last | {"usage": usage(*outs, n=n)})
            yield sse("[DONE]")
        finally:  # the client left, or the stream ended: abort what still runs
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return StreamingResponse(events(), media_type="text/event-stream")


async def _choice_events(ctx: ServingContext, req, chunk, first, calling, logprobs):
    """One choice's chunks (index 0; the caller sets it), then its finished RequestOutput. With
    tools offered, text that may be a call is held back and the calls, once parsed at the end,
    go out as `tool_calls` deltas (OpenAI's shape)."""
    held = calling.stream() if calling is not None else None
    if first is not None:
        yield copy.deepcopy(first)
    stream, ids, full = ctx.text_stream(req), [], ""
    # tokens (and their log probabilities) whose logprobs have not gone out yet; offset: the
    # text sent so far (completions' text_offset)
    pending_ids, pending, offset = [], [], 0

    def with_logprobs(text: str | None, finish: str | None) -> dict:
        nonlocal pending_ids, pending, offset
        shape = None
        if logprobs is not None and pending:
            shape = logprobs(ctx.core.tokenizer, pending_ids, pending, offset=offset)
            pending_ids, pending = [], []
        offset += len(text or "")
        return chunk(text, finish, shape)

    async for out in ctx.loop.generate(req):
        if out.finish_reason == "error":
            yield out
            return
        ids.extend(out.new_token_ids)
        pending_ids += out.new_token_ids[: len(out.new_logprobs)]
        pending += out.new_logprobs
        text = stream.delta(ids, out)
        finish = out.finish_reason
        if held is not None:
            full += text
            text = held.delta(full)
            if finish is not None:
                content, calls = calling.parse(full)
                if calls:
                    if content and held.sent == 0:
                        yield chunk(content, None)
                    deltas = [{"index": i, **c.to_openai()} for i, c in enumerate(calls)]
                    yield chunk(None, None, tool_calls=deltas)
                    finish, text = "tool_calls", ""
                else:  # no call after all: what was held back goes out now
                    text += full[held.sent :]
        if text or finish is not None:
            yield with_logprobs(text, finish)
        if finish is not None:
            yield out
            return
