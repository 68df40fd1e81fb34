"""The HTTP app: OpenAI-compatible completions and chat, native `/generate`, health, Prometheus
metrics and cache administration, over an `EngineLoop`.

Every error is a JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with a 4xx status for bad input and 5xx only for the server's own failures. A client that goes
away mid-request has its request aborted and its pages freed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engine.engine_loop import EngineLoop, RequestOutput
from engine.metrics import Exposition
from engine.openai_protocol import ChatCompletionRequest, CompletionRequest, GenerateRequest
from engine.text_stream import TextStream

log = logging.getLogger(__name__)

_OPEN_PATHS = ("/health",)  # answered without an API key (load balancers probe it)


class APIError(Exception):
    def __init__(self, status: int, message: str, kind: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param


def _error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


def _validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for e in err.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {e.get('msg')}", None
        where = ".".join(loc)
        param = param or where or None
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "invalid request: " + "; ".join(parts), param


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _stream_error(out: RequestOutput) -> bytes:
    """The last SSE event of a stream the engine failed (the status line has gone already)."""
    return _sse({"error": {"message": out.error, "type": "server_error", "code": 500}})


def _usage(out: RequestOutput) -> dict:
    return {
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.num_output_tokens,
        "total_tokens": out.prompt_tokens + out.num_output_tokens,
        "prompt_tokens_details": {
            "cached_tokens": out.cached_tokens,
            "cached_tokens_by_tier": out.cached_by_tier,  # radixkv: device, host, remote
        },
    }


def build_app(
    loop: EngineLoop,
    *,
    model_name: str,
    api_key: str | None = None,
) -> FastAPI:
    """The FastAPI app; starts the engine loop on startup and stops it on shutdown."""
    engine = loop.core
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if not loop.alive:
            loop.start()
        yield
        loop.stop()

    app = FastAPI(title="radixkv", version="0.1.0", lifespan=lifespan)

    @app.exception_handler(APIError)
    async def _api_error(_req: Request, err: APIError) -> JSONResponse:
        return _error(err.status, err.message, err.kind, err.param)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(err)
        return _error(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_req: Request, err: StarletteHTTPException) -> JSONResponse:
        return _error(err.status_code, str(err.detail), "invalid_request_error")

    @app.exception_handler(Exception)
    async def _internal(_req: Request, err: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, f"internal error: {type(err).__name__}", "server_error")

    if api_key:

        @app.middleware("http")
        async def _auth(request: Request, call_next):
            if request.url.path not in _OPEN_PATHS:
                given = request.headers.get("authorization", "")
                if not secrets.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                    return _error(
                        401,
                        "missing or wrong API key (Authorization: Bearer ...)",
                        "authentication_error",
                    )
            return await call_next(request)

    # ---- helpers -----------------------------------------------------------------------------
    def check_model(name: str) -> None:
        if name != model_name:
            raise APIError(
                404,
                f"model {name!r} does not exist here; this server serves {model_name!r}",
                "invalid_request_error",
                "model",
            )

    def make_request(prompt, sampling: dict):
        try:
            return engine.make_request(prompt, **sampling)
        except ValueError as err:
            raise APIError(400, str(err), "invalid_request_error") from err

    def max_tokens_for(prompt_ids_len: int, requested: int | None) -> int:
        if requested is None:
            return max(1, engine.context_length - prompt_ids_len)
        return requested

    def encode(prompt) -> list[int]:
        try:
            return engine.encode(prompt)
        except ValueError as err:
            raise APIError(400, str(err), "invalid_request_error", "prompt") from err

    async def run_to_end(http: Request, req) -> tuple[list[int], RequestOutput]:
        """Collect a whole request; abort it if the client disconnects first."""
        ids: list[int] = []

        async def collect() -> RequestOutput:
            async for out in loop.generate(req):
                ids.extend(out.new_token_ids)
                if out.finish_reason is not None:
                    return out
            raise AssertionError("the output stream ended without a finish")

        task = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(_wait_disconnect(http))
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()  # closes the generator: the request is aborted, its pages freed
            await asyncio.gather(task, return_exceptions=True)
            raise APIError(499, "client closed the request", "invalid_request_error")
        watcher.cancel()
        out = task.result()
        if out.finish_reason == "error":
            raise APIError(500, out.error or "the engine failed", "server_error")
        return ids, out

    def text_stream(req) -> TextStream:
        tok = engine.tokenizer
        return TextStream(tok.decode if tok else lambda _ids: "", req.params.stop)

    def delta_text(stream: TextStream, ids: list[int], out: RequestOutput) -> str:
        if out.finish_reason is None:
            return stream.push(ids)
        return stream.finish(out.text or "")

    # ---- OpenAI ------------------------------------------------------------------------------
    @app.get("/v1/models")
    async def models() -> dict:
        return {
            "object": "list",
            "data": [
                {
                    "id": model_name,
                    "object": "model",
                    "created": created,
                    "owned_by": "radixkv",
                    "max_model_len": engine.context_length,
                }
            ],
        }

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request):
        check_model(body.model)
        ids = encode(body.prompt)
        req = make_request(ids, body.sampling(max_tokens_for(len(ids), body.max_tokens)))
        rid, now = f"cmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(text: str, finish: str | None) -> dict:
            return {
                "id": rid,
                "object": "text_completion",
                "created": now,
                "model": model_name,
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
            }

        if not body.stream:
            out_ids, out = await run_to_end(http, req)
            body_ = chunk(out.text or "", out.finish_reason)
            return body_ | {"usage": _usage(out)}
        return _streaming(req, chunk, body.include_usage, first=None)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: Request):
        check_model(body.model)
        tok = engine.tokenizer
        if tok is None or not tok.chat_template:
            raise APIError(
                400, "this model has no chat template: use /v1/completions", "invalid_request_error"
            )
        try:
            prompt = tok.apply_chat_template(body.chat_messages())
        except ValueError as err:
            raise APIError(400, str(err), "invalid_request_error", "messages") from err
        ids = encode(prompt)
        req = make_request(ids, body.sampling(max_tokens_for(len(ids), body.requested_max_tokens)))
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        if not body.stream:
            _, out = await run_to_end(http, req)
            return {
                "id": rid,
                "object": "chat.completion",
                "created": now,
                "model": model_name,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": out.text or ""},
                        "logprobs": None,
                        "finish_reason": out.finish_reason,
                    }
                ],
                "usage": _usage(out),
            }

        def chunk(text: str | None, finish: str | None, role: bool = False) -> dict:
            delta = {"role": "assistant", "content": ""} if role else {}
            if text:
                delta["content"] = text
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": now,
                "model": model_name,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }

        return _streaming(req, chunk, body.include_usage, first=chunk(None, None, role=True))

    def _streaming(req, chunk, include_usage: bool, first: dict | None) -> StreamingResponse:
        async def events() -> AsyncIterator[bytes]:
            if first is not None:
                yield _sse(first)
            stream, ids = text_stream(req), []
            async for out in loop.generate(req):
                if out.finish_reason == "error":
                    yield _stream_error(out)
                    return
                ids.extend(out.new_token_ids)
                text = delta_text(stream, ids, out)
                if text or out.finish_reason is not None:
                    yield _sse(chunk(text, out.finish_reason))
                if out.finish_reason is not None:
                    if include_usage:
                        last = chunk("", None)
                        last["choices"] = []
                        yield _sse(last | {"usage": _usage(out)})
                    yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- native ------------------------------------------------------------------------------
    @app.post("/generate")
    async def generate(body: GenerateRequest, http: Request):
        prompt = body.input_ids if body.input_ids is not None else body.text
        ids = encode(prompt)
        req = make_request(ids, body.sampling_params.sampling())
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
            out_ids, out = await run_to_end(http, req)
            return result(out_ids, out.text or "", out)

        async def events() -> AsyncIterator[bytes]:
            stream, ids, text = text_stream(req), [], ""
            async for out in loop.generate(req):
                if out.finish_reason == "error":
                    yield _stream_error(out)
                    return
                ids.extend(out.new_token_ids)
                text += delta_text(stream, ids, out)
                yield _sse(result(ids, text, out))  # SGLang streams the cumulative output
            yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream")

    # ---- operations --------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        if not loop.alive:
            return _error(503, "the engine thread is not running", "server_error")
        remote = engine.cache.remote_status()  # thread-safe reads: answers while steps run
        return {
            "status": "ok",  # degraded remote tier: still ready, requests recompute
            "model": model_name,
            "remote_tier": "off" if remote is None else "degraded" if remote["degraded"] else "ok",
            "remote": remote,
        }

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        text = await loop.call(lambda: prometheus_text(loop))
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @app.get("/cache/stats")
    async def cache_stats() -> dict:
        return await loop.call(lambda: cache_report(loop, integrity=True))

    @app.post("/cache/flush")
    async def cache_flush() -> dict:
        def flush() -> dict:
            cache = engine.cache
            nodes = cache.flush()
            return {"flushed_nodes": nodes, "integrity": cache.check_integrity()}

        return await loop.call(flush)

    return app


async def _wait_disconnect(http: Request) -> None:
    """Returns when the client has gone (the body was read already: only a disconnect comes)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


def cache_report(loop: EngineLoop, integrity: bool) -> dict:
    """The cache's state, on the engine thread: counters, pools, remote traffic, integrity."""
    cache, sched = loop.core.cache, loop.scheduler
    c = cache.counters
    queried = max(c.tokens_queried, 1)
    report = {
        "page_size": cache.page_size,
        "pages": {
            "device": {
                "capacity": cache.device_pool.num_pages,
                "free": cache.device_pool.allocator.num_free,
            },
            "host": {
                "capacity": cache.host_pool.num_pages,
                "free": cache.host_pool.allocator.num_free,
            },
            "remote": {"known": cache.remote_pages_known, "budget": cache.config.remote_pages},
        },
        "token_hit_rate": sum(c.tokens_hit) / queried,
        "hit_rate_by_tier": dict(
            zip(("device", "host", "remote"), (h / queried for h in c.tokens_hit), strict=True)
        ),
        "counters": {
            "matches": c.matches,
            "tokens_queried": c.tokens_queried,
            "tokens_hit": dict(zip(("device", "host", "remote"), c.tokens_hit, strict=True)),
            "evicted_pages": dict(zip(("device", "host", "remote"), c.evicted_pages, strict=True)),
            "inserted_pages": c.inserted_pages,
            "remote_write_failures": c.remote_write_failures,
        },
        "pages_moved": dict(cache.controller.moved),
        "remote_inflight": cache.controller.inflight,
        "remote": None
        if cache.store is None
        else {**cache.remote_status(), "traffic": cache.store.stats.as_dict()},
        "scheduler": {
            "running": len(sched.running),
            "waiting": len(sched.waiting),
            "preemptions": sched.preemptions,
        },
        "tree_nodes": cache.tree.num_nodes,
    }
    if integrity:
        report["integrity"] = cache.check_integrity()
    return report


def prometheus_text(loop: EngineLoop) -> str:
    """The Prometheus exposition, on the engine thread."""
    r = cache_report(loop, integrity=False)
    s = loop.stats
    page_bytes = loop.core.cache.layout.page_bytes
    e = Exposition()
    e.add(
        "radixkv_requests_running",
        "gauge",
        "Requests in the running batch.",
        r["scheduler"]["running"],
    )
    e.add(
        "radixkv_requests_waiting",
        "gauge",
        "Requests waiting for admission.",
        r["scheduler"]["waiting"],
    )
    for reason, n in sorted(s.finished.items()):
        e.add(
            "radixkv_requests_finished_total",
            "counter",
            "Finished requests by reason.",
            n,
            reason=reason,
        )
    e.add(
        "radixkv_preemptions_total",
        "counter",
        "Requests preempted for device pages.",
        r["scheduler"]["preemptions"],
    )
    e.add(
        "radixkv_prompt_tokens_total",
        "counter",
        "Prompt tokens of finished requests.",
        s.prompt_tokens,
    )
    e.add("radixkv_generation_tokens_total", "counter", "Generated tokens.", s.generation_tokens)
    for tier, n in s.cached_tokens.items():
        e.add(
            "radixkv_cached_prompt_tokens_total",
            "counter",
            "Prompt tokens served from the cache, by tier.",
            n,
            tier=tier,
        )
    e.add(
        "radixkv_cache_hit_rate",
        "gauge",
        "Cached tokens / queried tokens since start.",
        r["token_hit_rate"],
    )
    for tier, rate in r["hit_rate_by_tier"].items():
        e.add(
            "radixkv_cache_hit_rate_by_tier",
            "gauge",
            "Hit rate by the tier that held the tokens.",
            rate,
            tier=tier,
        )
    for tier in ("device", "host"):
        p = r["pages"][tier]
        e.add(
            "radixkv_cache_pages",
            "gauge",
            "Pages by tier and state.",
            p["capacity"] - p["free"],
            tier=tier,
            state="used",
        )
        e.add(
            "radixkv_cache_pages",
            "gauge",
            "Pages by tier and state.",
            p["free"],
            tier=tier,
            state="free",
        )
    e.add(
        "radixkv_cache_pages",
        "gauge",
        "Pages by tier and state.",
        r["pages"]["remote"]["known"],
        tier="remote",
        state="used",
    )
    for tier, n in r["counters"]["evicted_pages"].items():
        e.add(
            "radixkv_cache_evicted_pages_total", "counter", "Pages evicted, by tier.", n, tier=tier
        )
    for direction, n in r["pages_moved"].items():
        e.add(
            "radixkv_transfer_bytes_total",
            "counter",
            "Bytes moved between tiers.",
            n * page_bytes,
            direction=direction,
        )
    e.add(
        "radixkv_remote_queue_depth",
        "gauge",
        "Remote store operations in flight.",
        r["remote_inflight"],
    )
    remote = r["remote"]
    if remote is not None:
        e.add(
            "radixkv_remote_degraded",
            "gauge",
            "1 while the remote tier is marked down (requests recompute).",
            int(remote["degraded"]),
        )
        e.add(
            "radixkv_remote_degraded_total",
            "counter",
            "Times the remote tier was marked down.",
            remote["times_opened"],
        )
        traffic = remote["traffic"]
        for name in ("hits", "misses", "corrupt", "put_failures"):
            e.add(
                "radixkv_remote_pages_total",
                "counter",
                "Remote page operations by outcome.",
                traffic[name],
                outcome=name,
            )
        e.add(
            "radixkv_remote_reads_skipped_total",
            "counter",
            "Remote reads skipped because recomputing was estimated faster.",
            remote["remote_reads_skipped_as_slower"],
        )
    e.add("radixkv_step_errors_total", "counter", "Engine steps that raised.", s.step_errors)
    for h in (s.ttft, s.itl, s.e2e):
        e.histogram(h)
    return e.text()
