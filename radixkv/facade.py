"""`radixkv.Engine`: the embedded library: a model, the hierarchical cache and the scheduler
behind one object (an `engine.EngineCore`), with generate, chat, stream and sessions. An entry
point: it imports the serving engine, which is loaded on first use of `radixkv.Engine`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import torch

from engine.config import EngineConfig
from engine.engine_core import EngineCore
from engine.engine_loop import EngineLoop
from engine.text_stream import TextStream
from radixkv.cache.hicache import HiRadixCache
from radixkv.results import GenerationResult, StreamChunk

if TYPE_CHECKING:  # chat needs the server's request types (pydantic): loaded on first chat
    from engine.http.chat_turn import ChatTurn


class Session:
    """An agent's or a user's growing conversation.

    Each turn resends the whole context (the cache turns that into a prefix hit). Between turns
    the session asks the cache to prefetch its context from the remote tier into host memory and
    refreshes its recency, so the next turn finds it close by even after other traffic.
    """

    def __init__(self, engine: Engine, system: str | None) -> None:
        self.engine = engine
        self.messages: list[dict] = [{"role": "system", "content": system}] if system else []

    def chat(self, content: str | None, **sampling) -> GenerationResult:
        """The next turn: `content` as the user's message (None: go on from what was added to
        `messages`, say tool results `{"role": "tool", "tool_call_id", "content"}`); takes
        `Engine.chat`'s options (tools, tool_choice, response_format, sampling)."""
        if content is not None:
            self.messages.append({"role": "user", "content": content})
        result = self.engine.chat(self.messages, **sampling)
        reply: dict = {"role": "assistant", "content": result.text}
        if result.tool_calls:
            reply["tool_calls"] = result.tool_calls
        self.messages.append(reply)
        self._keep_warm()
        return result

    def _keep_warm(self) -> None:
        tok, cache = self.engine.tokenizer, self.engine.cache
        literal = not self.engine.core.config.special_tokens_in_content
        context = tok.encode_chat(
            self.messages, add_generation_prompt=False, literal_content=literal
        )

        def warm() -> None:
            cache.match(context)  # recency: this context was just used
            cache.prefetch(context)  # any remote part comes to host before the next turn

        self.engine.on_engine_thread(warm)


class Engine:
    """Generate with a hierarchical prefix cache, in this process.

    `Engine()` uses every `EngineConfig` default; `Engine(config)` takes a config;
    `Engine(**overrides)` or `Engine(config, **overrides)` changes fields of it, and a string
    first argument is the model (`Engine("path/to/model.gguf", kv_memory_gb=4)`). See
    `engine.config.EngineConfig` for every option (model, device, tiers, policies, batching).

    `generate`, `chat` and `stream` share one engine: while a stream (or a server) runs the
    engine thread, `generate` goes through it too.
    """

    def __init__(self, config: EngineConfig | str | None = None, /, **overrides) -> None:
        if isinstance(overrides.get("dtype"), torch.dtype):
            overrides["dtype"] = str(overrides["dtype"]).removeprefix("torch.")
        if isinstance(config, EngineConfig):
            config = config.replace(**overrides)
        elif config is None or isinstance(config, str):
            config = EngineConfig(**({"model": config} if config is not None else {}), **overrides)
        else:
            raise TypeError(f"Engine() takes an EngineConfig or a model name, got {config!r}")
        self.config = config
        self.core = EngineCore(config)
        self._loop = None  # the engine thread, started by the first stream (or a server)

    # ---- what the engine is made of ----------------------------------------------------------
    @property
    def cache(self) -> HiRadixCache:
        return self.core.cache

    @property
    def scheduler(self):
        return self.core.scheduler

    @property
    def model(self):
        return self.core.model

    @property
    def tokenizer(self):
        return self.core.tokenizer

    @property
    def device(self) -> torch.device:
        return self.core.device

    @property
    def attention(self) -> str:
        return self.core.runner.attention

    @property
    def model_name(self) -> str:
        return self.core.model_name

    @property
    def fingerprint(self) -> str:
        return self.core.fingerprint

    @property
    def context_length(self) -> int:
        return self.core.context_length

    @property
    def loop(self):
        """The engine thread (an `EngineLoop`, not started until a stream or a server starts
        it); while it runs, it alone steps the engine."""
        if self._loop is None:
            self._loop = EngineLoop(self.core)
        return self._loop

    def _threaded(self) -> bool:
        return self._loop is not None and self._loop.alive

    # ---- requests --------------------------------------------------------------------------------
    def make_request(self, prompt, **sampling):
        """Validate a prompt and sampling options into a Request, not yet queued (thread-safe)."""
        return self.core.make_request(prompt, **sampling)

    def submit(self, prompt, **sampling):
        """Queue one prompt; returns its Request (advance it with `step()`)."""
        self._require_unthreaded("submit")
        req = self.core.make_request(prompt, **sampling)
        self.core.scheduler.add(req)
        return req

    def step(self):
        """One engine step by hand (see `EngineCore.step`)."""
        self._require_unthreaded("step")
        return self.core.step()

    def _require_unthreaded(self, what: str) -> None:
        if self._threaded():
            raise RuntimeError(
                f"{what}() by hand while the engine thread runs (a stream or server)"
            )

    def generate(self, prompts, **sampling) -> list[GenerationResult]:
        """Generate for each prompt (strings or token-id lists), batched; results in order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise ValueError("generate() takes a list of prompts")
        t0 = time.perf_counter()
        reqs = [self.core.make_request(p, **sampling) for p in prompts]
        if self._threaded():
            asyncio.run(self._through_loop(reqs))
        else:
            for r in reqs:
                self.core.scheduler.add(r)
            while any(r.finish_reason is None for r in reqs):
                self.core.iterate()
        return [self._result(r, t0) for r in reqs]

    async def _through_loop(self, reqs) -> None:
        async def one(req) -> None:
            async for _ in self._loop.generate(req):
                pass

        await asyncio.gather(*(one(r) for r in reqs))

    def chat(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
        response_format: dict | None = None,
        parallel_tool_calls: bool | None = None,
        **sampling,
    ) -> GenerationResult:
        """One chat turn, as the server's /v1/chat/completions runs it (the same code): OpenAI's
        `messages`, `tools`, `tool_choice` (none, auto, required or {"type": "function",
        "function": {"name": ...}}) and `response_format` ({"type": "json_schema",
        "json_schema": {"name", "schema"}}, json_object, ...). The result's `text` is the reply's
        content, `tool_calls` its calls and `parsed` its structured output."""
        t0 = time.perf_counter()
        turn, req = self._chat_request(
            messages, tools, tool_choice, response_format, parallel_tool_calls, sampling
        )
        if self._threaded():
            asyncio.run(self._through_loop([req]))
        else:
            self.core.scheduler.add(req)
            while req.finish_reason is None:
                self.core.iterate()
        return self._chat_result(turn, req, t0)

    async def achat(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
        response_format: dict | None = None,
        parallel_tool_calls: bool | None = None,
        **sampling,
    ) -> GenerationResult:
        """`chat` on the engine thread, awaited: no thread per call; cancelling the awaiting
        task aborts the request and frees its pages."""
        t0 = time.perf_counter()
        turn, req = await asyncio.to_thread(
            self._chat_request,
            messages,
            tools,
            tool_choice,
            response_format,
            parallel_tool_calls,
            sampling,
        )  # templating and grammars off the event loop
        await self._await_request(req)
        return self._chat_result(turn, req, t0)

    async def agenerate(self, prompts, **sampling) -> list[GenerationResult]:
        """`generate` on the engine thread, awaited (see `achat`)."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            raise ValueError("agenerate() takes a list of prompts")
        t0 = time.perf_counter()
        reqs = [self.core.make_request(p, **sampling) for p in prompts]
        await asyncio.gather(*(self._await_request(r) for r in reqs))
        return [self._result(r, t0) for r in reqs]

    def astream(self, prompt, **sampling) -> AsyncIterator[StreamChunk]:
        """`async for chunk in engine.astream(prompt)`: the same as `stream`."""
        return self.stream(prompt, **sampling)

    async def astream_chat(
        self,
        messages: list[dict],
        *,
        tools: list[dict] | None = None,
        tool_choice: str | dict | None = None,
        response_format: dict | None = None,
        parallel_tool_calls: bool | None = None,
        **sampling,
    ) -> AsyncIterator[StreamChunk]:
        """A chat turn streamed: `StreamChunk`s of its text as it is generated (with tools, the
        tool-call markup is left out of the text; the last chunk's `tool_calls` has the calls).
        Closing the iterator early, or cancelling its task, aborts the request."""
        turn, req = await asyncio.to_thread(
            self._chat_request,
            messages,
            tools,
            tool_choice,
            response_format,
            parallel_tool_calls,
            sampling,
        )
        if not self.loop.alive:
            self.loop.start()
        text, ids, full = TextStream(self.tokenizer.decode, req.params.stop), [], ""
        calls = turn.calling.stream()  # holds a tool call's markup back (None: no tools)
        async for out in self.loop.generate(req):
            if out.finish_reason == "error":
                raise RuntimeError(out.error)
            ids.extend(out.new_token_ids)
            delta = text.delta(ids, out)
            full += delta
            chunk = StreamChunk(out.new_token_ids, calls.delta(full) if calls else delta)
            if out.finish_reason is not None:
                chunk.finish_reason = out.finish_reason
                chunk.tool_calls = turn.reply(req.text)[1]
                chunk.prompt_tokens, chunk.cached_tokens = len(req.prompt_ids), req.cached_tokens
            yield chunk

    async def _await_request(self, req) -> None:
        if not self.loop.alive:
            self.loop.start()
        async for out in self.loop.generate(req):  # cancelled: the request is aborted
            if out.finish_reason == "error":
                raise RuntimeError(out.error)

    def _chat_request(self, messages, tools, tool_choice, response_format, parallel, sampling):
        """The turn (shared with the server) and its request; library sampling options win."""
        body = {"model": self.model_name, "messages": messages}
        for key, value in (
            ("tools", tools),
            ("tool_choice", tool_choice),
            ("response_format", response_format),
            ("parallel_tool_calls", parallel),
            ("max_tokens", sampling.get("max_tokens")),
        ):
            if value is not None:
                body[key] = value
        session = sampling.pop("session", None)
        from engine.http.chat_turn import ChatTurn  # pydantic: generate works without it

        turn = ChatTurn.from_openai(body, self.core)
        defaults = self.core.generation_defaults
        options = {
            k: defaults[k] if v is None and k in defaults else v
            for k, v in turn.sampling.items()
            if v is not None or k in defaults
        }
        if "grammar" in sampling and turn.sampling.get("grammar") is not None:
            raise ValueError("give a grammar or a response_format / forced tool call, not both")
        options.update(sampling)
        return turn, self.core.make_request(turn.ids, session=session, **options)

    def _chat_result(self, turn: ChatTurn, req, t0: float) -> GenerationResult:
        result = self._result(req, t0)
        content, calls, parsed = turn.reply(req.text)
        result.text, result.tool_calls, result.parsed = content or "", calls, parsed
        return result

    @staticmethod
    def _result(r, t0: float) -> GenerationResult:
        return GenerationResult(
            token_ids=list(r.output_ids),
            text=r.text,
            prompt_tokens=len(r.prompt_ids),
            cached_tokens=r.cached_tokens,
            cached_tokens_by_tier=dict(r.cached_by_tier),
            finish_reason=r.finish_reason,
            ttft_s=r.ttft_s,
            latency_s=time.perf_counter() - t0,
        )

    async def stream(self, prompt, **sampling):
        """Yield `StreamChunk`s (new token ids and text) as they are generated.

        Streams run on the engine thread (started on first use), so concurrent streams advance
        together in one batch. A stream closed early aborts its request and frees its pages.
        """
        req = self.core.make_request(prompt, **sampling)
        if not self.loop.alive:
            self.loop.start()
        decode = self.tokenizer.decode if self.tokenizer else lambda _ids: ""
        text, ids = TextStream(decode, req.params.stop), []
        async for out in self.loop.generate(req):
            if out.finish_reason == "error":
                raise RuntimeError(out.error)
            ids.extend(out.new_token_ids)
            yield StreamChunk(out.new_token_ids, text.delta(ids, out), out.finish_reason)

    def on_engine_thread(self, fn):
        """Run `fn()` where the engine's state may be touched: the engine thread while it runs,
        else here."""
        return asyncio.run(self._loop.call(fn)) if self._threaded() else fn()

    def session(self, system: str | None = None) -> Session:
        """A conversation whose context stays cached between turns (see `Session`)."""
        return Session(self, system)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.stop()
        self.core.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
