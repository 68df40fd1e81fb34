"""`RadixKVLLM`: radixkv as an in-process LlamaIndex function-calling LLM
(`pip install 'radixkv[llama-index]'`).

    from radixkv import Engine
    from radixkv.integrations.llama_index import RadixKVLLM

    llm = RadixKVLLM(engine=Engine())
    llm.chat([ChatMessage(role="user", content="Hello")])
    llm.chat_with_tools([weather_tool], user_msg="Weather in Paris?")   # FunctionCallingLLM

Every call is `Engine.chat` / `astream_chat` (the server's chat code, in this process); a
completion is a one-message chat.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.llms.function_calling import FunctionCallingLLM
from llama_index.core.llms.llm import ToolSelection
from pydantic import Field

from radixkv.integrations import call_arguments


def to_openai(message: ChatMessage) -> dict:
    out: dict = {"role": message.role.value, "content": message.content or ""}
    calls = message.additional_kwargs.get("tool_calls")
    if calls:
        out["tool_calls"] = calls
        out["content"] = message.content or None
    if message.role == MessageRole.TOOL:
        out["tool_call_id"] = message.additional_kwargs.get("tool_call_id", "")
    return out


class RadixKVLLM(FunctionCallingLLM):
    """A LlamaIndex function-calling LLM over an in-process `radixkv.Engine`."""

    engine: Any = Field(exclude=True)  # a radixkv.Engine
    max_tokens: int | None = None
    temperature: float | None = None

    @classmethod
    def class_name(cls) -> str:
        return "RadixKVLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.engine.context_length,
            num_output=self.max_tokens or 256,
            is_chat_model=True,
            is_function_calling_model=True,
            model_name=self.engine.model_name,
        )

    def _options(self, kwargs: dict) -> dict:
        options = {
            k: v
            for k, v in (("max_tokens", self.max_tokens), ("temperature", self.temperature))
            if v is not None
        }
        return options | kwargs

    def _response(self, result) -> ChatResponse:
        extra = {"tool_calls": result.tool_calls} if result.tool_calls else {}
        message = ChatMessage(
            role=MessageRole.ASSISTANT, content=result.text, additional_kwargs=extra
        )
        usage = {
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": len(result.token_ids),
            "cached_tokens": result.cached_tokens,
        }
        return ChatResponse(message=message, raw={"usage": usage}, additional_kwargs=usage)

    # ---- chat --------------------------------------------------------------------------------
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result = self.engine.chat([to_openai(m) for m in messages], **self._options(kwargs))
        return self._response(result)

    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result = await self.engine.achat([to_openai(m) for m in messages], **self._options(kwargs))
        return self._response(result)

    async def astream_chat(
        self, messages: Sequence[ChatMessage], **kwargs: Any
    ) -> ChatResponseAsyncGen:
        oai, options = [to_openai(m) for m in messages], self._options(kwargs)

        async def gen():
            text = ""
            async for chunk in self.engine.astream_chat(oai, **options):
                text += chunk.text
                extra = {"tool_calls": chunk.tool_calls} if chunk.tool_calls else {}
                yield ChatResponse(
                    message=ChatMessage(
                        role=MessageRole.ASSISTANT, content=text, additional_kwargs=extra
                    ),
                    delta=chunk.text,
                )

        return gen()

    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        """The async stream, collected on a private event loop and replayed."""

        async def collect():
            return [r async for r in await self.astream_chat(messages, **kwargs)]

        yield from asyncio.run(collect())

    # ---- completion: a one-message chat -------------------------------------------------------
    def _as_chat(self, prompt: str) -> list[ChatMessage]:
        return [ChatMessage(role=MessageRole.USER, content=prompt)]

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        r = self.chat(self._as_chat(prompt), **kwargs)
        return CompletionResponse(text=r.message.content or "", raw=r.raw)

    async def acomplete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponse:
        r = await self.achat(self._as_chat(prompt), **kwargs)
        return CompletionResponse(text=r.message.content or "", raw=r.raw)

    def stream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseGen:
        for r in self.stream_chat(self._as_chat(prompt), **kwargs):
            yield CompletionResponse(text=r.message.content or "", delta=r.delta)

    async def astream_complete(
        self, prompt: str, formatted: bool = False, **kwargs: Any
    ) -> CompletionResponseAsyncGen:
        stream = await self.astream_chat(self._as_chat(prompt), **kwargs)

        async def gen():
            async for r in stream:
                yield CompletionResponse(text=r.message.content or "", delta=r.delta)

        return gen()

    # ---- function calling ----------------------------------------------------------------------
    def _prepare_chat_with_tools(
        self,
        tools: Sequence[Any],
        user_msg: str | ChatMessage | None = None,
        chat_history: list[ChatMessage] | None = None,
        verbose: bool = False,
        allow_parallel_tool_calls: bool = False,
        tool_required: bool = False,
        **kwargs: Any,
    ) -> dict[str, Any]:
        messages = list(chat_history or [])
        if isinstance(user_msg, str):
            user_msg = ChatMessage(role=MessageRole.USER, content=user_msg)
        if user_msg is not None:
            messages.append(user_msg)
        specs = [t.metadata.to_openai_tool() for t in tools]
        return {
            "messages": messages,
            "tools": specs or None,
            "tool_choice": "required" if tool_required and specs else None,
            "parallel_tool_calls": allow_parallel_tool_calls,
            **kwargs,
        }

    def get_tool_calls_from_response(
        self, response: ChatResponse, error_on_no_tool_call: bool = True, **kwargs: Any
    ) -> list[ToolSelection]:
        calls = response.message.additional_kwargs.get("tool_calls") or []
        if not calls and error_on_no_tool_call:
            raise ValueError(f"expected a tool call, got: {response.message.content!r}")
        return [
            ToolSelection(
                tool_id=c.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                tool_name=c["function"]["name"],
                tool_kwargs=call_arguments(c),
            )
            for c in calls
        ]
