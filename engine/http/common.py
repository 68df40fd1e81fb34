"""What the HTTP routers share: OpenAI-shaped errors, SSE framing, and the serving context
(the engine loop, the served model's name and the helpers every generation route uses).

Every error is a JSON body in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`,
with a 4xx status for bad input and 5xx only for the server's own failures.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from engine.engine_loop import EngineLoop, RequestOutput
from engine.text_stream import TextStream

# routes that need the admin key, never the inference key
ADMIN_PATHS = ("/cache/flush", "/cache/stats", "/flush_cache")

# the error `code` OpenAI clients read (a string, as OpenAI sends it), by status
ERROR_CODES = {
    400: "invalid_request",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "request_too_large",
    499: "client_closed_request",
    500: "internal_error",
    503: "engine_unavailable",
}


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        kind: str,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param = status, message, kind, param
        self.code = code


def error_response(
    status: int, message: str, kind: str, param: str | None = None, code: str | None = None
) -> JSONResponse:
    code = code or ERROR_CODES.get(status, "error")
    # a message may quote the client's text, lone surrogates included: escaped, never a 500
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    if param is not None:
        param = param.encode("utf-8", "backslashreplace").decode("utf-8")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status)


def validation_message(err: RequestValidationError) -> tuple[str, str | None]:
    parts, param = [], None
    for e in err.errors():
        loc = [str(x) for x in e.get("loc", ()) if x != "body"]
        if e.get("type") == "json_invalid":
            return f"the request body is not valid JSON: {e.get('msg')}", None
        where = ".".join(loc)
        param = param or where or None
        parts.append(f"{where}: {e.get('msg')}" if where else str(e.get("msg")))
    return "invalid request: " + "; ".join(parts), param


def sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def stream_error(out: RequestOutput) -> bytes:
    """The last SSE event of a stream the engine failed (the status line has gone already)."""
    return sse({"error": {"message": out.error, "type": "server_error", "code": "internal_error"}})


def usage(*outs: RequestOutput, n: int = 1) -> dict:
    """Token counts of a call's choices, in choice order (prompt by prompt, `n` choices each):
    each prompt and its cached tokens counted once, every choice's completion counted."""
    firsts = outs[::n]  # one choice per prompt
    prompt = sum(o.prompt_tokens for o in firsts)
    completion = sum(o.num_output_tokens for o in outs)
    tiers: dict[str, int] = {}
    for o in firsts:
        for tier, k in o.cached_by_tier.items():
            tiers[tier] = tiers.get(tier, 0) + k
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {
            "cached_tokens": sum(o.cached_tokens for o in firsts),
            "cached_tokens_by_tier": tiers,  # radixkv: device, host, remote
        },
    }


async def wait_disconnect(http: Request) -> None:
    """Returns when the client has gone (the body was read already: only a disconnect comes)."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            return


@dataclass
class ServingContext:
    """The engine loop and the served model, with the helpers of the generation routes."""

    loop: EngineLoop
    model_name: str
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def core(self):
        return self.loop.core

    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise APIError(
                404,
                f"model {name!r} does not exist here; this server serves {self.model_name!r}",
                "invalid_request_error",
                "model",
                "model_not_found",
            )

    def make_request(self, prompt, sampling: dict, session: str | None = None):
        """A request; sampling values left None take the model's generation defaults. `session`
        names its conversation (the prefetcher's hint)."""
        defaults = self.core.generation_defaults
        sampling = {
            k: defaults[k] if v is None and k in defaults else v for k, v in sampling.items()
        }
        try:
            return self.core.make_request(prompt, session=session, **sampling)
        except ValueError as err:
            code = "context_length_exceeded" if "context" in str(err) else None
            raise APIError(400, str(err), "invalid_request_error", code=code) from err

    def max_tokens_for(self, prompt_len: int, requested: int | None) -> int:
        if requested is None:  # up to the end of what the request may hold
            return max(1, self.core.max_request_tokens - prompt_len)
        return requested

    def encode(self, prompt) -> list[int]:
        try:
            return self.core.encode(prompt)
        except ValueError as err:
            raise APIError(400, str(err), "invalid_request_error", "prompt") from err

    def decode_prompt(self, prompt, ids: list[int]) -> str:
        """A prompt's text (to echo): as sent, or its token ids decoded."""
        if isinstance(prompt, str):
            return prompt
        if self.core.tokenizer is None:
            raise APIError(
                400, "echo of token ids needs a tokenizer", "invalid_request_error", "echo"
            )
        return self.core.tokenizer.decode(ids)

    async def run_to_end(self, http: Request, req) -> tuple[list[int], RequestOutput]:
        """Collect a whole request; abort it if the client disconnects first."""
        (result,) = await self.run_all(http, [req])
        return result

    async def run_all(self, http: Request, reqs: list) -> list[tuple[list[int], RequestOutput]]:
        """Collect several requests (the choices of one call); abort them all if the client
        disconnects first. Requests with the same prompt as the first are started once it has
        its first token, when its prompt is in the cache: one prefill serves them all."""
        first_token = asyncio.Event()

        async def collect(req) -> tuple[list[int], RequestOutput]:
            if req is not reqs[0] and req.prompt_ids == reqs[0].prompt_ids:
                await first_token.wait()
            ids: list[int] = []
            async for out in self.loop.generate(req):
                ids.extend(out.new_token_ids)
                first_token.set()
                if out.finish_reason is not None:
                    return ids, out
            raise AssertionError("the output stream ended without a finish")

        task = asyncio.ensure_future(asyncio.gather(*(collect(r) for r in reqs)))
        watcher = asyncio.ensure_future(wait_disconnect(http))
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if task not in done:
            task.cancel()  # closes the generators: the requests are aborted, their pages freed
            await asyncio.gather(task, return_exceptions=True)
            raise APIError(499, "client closed the request", "invalid_request_error")
        watcher.cancel()
        results = task.result()
        for _, out in results:
            if out.finish_reason == "error":
                raise APIError(500, out.error or "the engine failed", "server_error")
        return results

    def text_stream(self, req) -> TextStream:
        tok = self.core.tokenizer
        return TextStream(tok.decode if tok else lambda _ids: "", req.params.stop)
