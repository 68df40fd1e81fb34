"""`ChatRadixKV`: radixkv as an in-process LangChain chat model (`pip install 'radixkv[langchain]'`).

    from radixkv import Engine
    from radixkv.integrations.langchain import ChatRadixKV

    llm = ChatRadixKV(engine=Engine())
    llm.invoke("Hello")                                  # stream / ainvoke / astream too
    llm.bind_tools([get_weather]).invoke("Weather in Paris?").tool_calls
    llm.with_structured_output(Person).invoke("Invent a person")   # json_schema or function_calling

Every call is `Engine.chat` / `astream_chat` (the server's chat code, in this process).
`usage_metadata` carries the prompt tokens served from the cache (`input_token_details.cache_read`).
A LangGraph `thread_id` (in the run's metadata) names the cache session of the conversation.
"""

from __future__ import annotations

import asyncio
import json
import queue
import threading
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
from langchain_core.output_parsers.openai_tools import (
    JsonOutputKeyToolsParser,
    PydanticToolsParser,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.utils.function_calling import convert_to_json_schema, convert_to_openai_tool
from langchain_core.utils.pydantic import is_basemodel_subclass
from pydantic import ConfigDict, Field

from radixkv.integrations import call_arguments

_ROLES = {"human": "user", "ai": "assistant", "system": "system", "tool": "tool"}


def to_openai(message: BaseMessage) -> dict:
    """A LangChain message as an OpenAI chat message."""
    if isinstance(message, ChatMessage):
        role = message.role
    elif isinstance(message, (HumanMessage, SystemMessage, AIMessage, ToolMessage)):
        role = _ROLES[message.type]
    else:
        raise ValueError(f"ChatRadixKV cannot send a {type(message).__name__}")
    content = message.content
    if isinstance(content, list):  # content blocks: their text parts
        content = "".join(
            b if isinstance(b, str) else b.get("text", "") for b in content if b is not None
        )
    out: dict = {"role": role, "content": content}
    if isinstance(message, AIMessage) and message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.get("id") or f"call_{uuid.uuid4().hex[:24]}",
                "type": "function",
                "function": {"name": c["name"], "arguments": json.dumps(c["args"])},
            }
            for c in message.tool_calls
        ]
        out["content"] = content or None
    if isinstance(message, ToolMessage):
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool_calls(calls: list[dict]) -> list[dict]:
    return [
        {
            "name": c["function"]["name"],
            "args": call_arguments(c),
            "id": c["id"],
            "type": "tool_call",
        }
        for c in calls
    ]


def _usage(result) -> dict:
    out_tokens = len(result.token_ids)
    return {
        "input_tokens": result.prompt_tokens,
        "output_tokens": out_tokens,
        "total_tokens": result.prompt_tokens + out_tokens,
        "input_token_details": {"cache_read": result.cached_tokens},
    }


class ChatRadixKV(BaseChatModel):
    """A LangChain chat model over an in-process `radixkv.Engine`."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(exclude=True)  # a radixkv.Engine
    temperature: float | None = None
    max_tokens: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list[str] | None = None

    @property
    def _llm_type(self) -> str:
        return "radixkv"

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_model_name"] = kwargs.get("model") or self.engine.model_name
        return params

    @property
    def _identifying_params(self) -> dict:
        return {"model_name": self.engine.model_name, "temperature": self.temperature}

    def _options(self, stop: list[str] | None, run_manager, kwargs: dict) -> dict:
        options = {
            k: v
            for k, v in (
                ("temperature", self.temperature),
                ("max_tokens", self.max_tokens),
                ("top_p", self.top_p),
                ("seed", self.seed),
                ("stop", stop or self.stop),
            )
            if v is not None
        }
        options.update(kwargs)
        options.pop("ls_structured_output_format", None)  # for LangChain's callbacks only
        metadata = getattr(run_manager, "metadata", None) or {}
        if "session" not in options and metadata.get("thread_id") is not None:
            options["session"] = str(metadata["thread_id"])[:256]
        return options

    def _message(self, result) -> AIMessage:
        return AIMessage(
            content=result.text,
            tool_calls=_tool_calls(result.tool_calls),
            usage_metadata=_usage(result),
            response_metadata={
                "model_name": self.engine.model_name,
                "finish_reason": "tool_calls" if result.tool_calls else result.finish_reason,
            },
        )

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._options(stop, run_manager, kwargs)
        result = self.engine.chat([to_openai(m) for m in messages], **options)
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        options = self._options(stop, run_manager, kwargs)
        result = await self.engine.achat([to_openai(m) for m in messages], **options)
        return ChatResult(generations=[ChatGeneration(message=self._message(result))])

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        options = self._options(stop, run_manager, kwargs)
        prompt_tokens, out_tokens = None, 0
        async for chunk in self.engine.astream_chat([to_openai(m) for m in messages], **options):
            out_tokens += len(chunk.token_ids)
            message = AIMessageChunk(content=chunk.text)
            if chunk.finish_reason is not None:
                message = AIMessageChunk(
                    content=chunk.text,
                    tool_call_chunks=[
                        {
                            "name": c["name"],
                            "args": json.dumps(c["args"]),
                            "id": c["id"],
                            "index": i,
                            "type": "tool_call_chunk",
                        }
                        for i, c in enumerate(_tool_calls(chunk.tool_calls))
                    ],
                    response_metadata={
                        "model_name": self.engine.model_name,
                        "finish_reason": "tool_calls" if chunk.tool_calls else chunk.finish_reason,
                    },
                )
                prompt_tokens = chunk.prompt_tokens
                message.usage_metadata = {
                    "input_tokens": prompt_tokens,
                    "output_tokens": out_tokens,
                    "total_tokens": prompt_tokens + out_tokens,
                    "input_token_details": {"cache_read": chunk.cached_tokens},
                }
            if run_manager and chunk.text:
                await run_manager.on_llm_new_token(chunk.text)
            yield ChatGenerationChunk(message=message)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        """The async stream, relayed from a helper thread's event loop."""
        out: queue.Queue = queue.Queue()
        done = object()

        async def pump() -> None:
            try:
                async for chunk in self._astream(messages, stop, None, **kwargs):
                    out.put(chunk)
            except BaseException as err:  # relayed to the caller
                out.put(err)
            finally:
                out.put(done)

        thread = threading.Thread(target=lambda: asyncio.run(pump()), daemon=True)
        thread.start()
        while (item := out.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            if run_manager and item.message.content:
                run_manager.on_llm_new_token(item.message.content)
            yield item
        thread.join()

    def bind_tools(
        self,
        tools: Sequence[Any],
        *,
        tool_choice: str | bool | dict | None = None,
        **kwargs: Any,
    ):
        """Offer `tools` (LangChain tools, functions, pydantic models or OpenAI tool dicts);
        `tool_choice`: auto, none, any / required / True (some call), or a tool's name."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        names = [t["function"]["name"] for t in formatted]
        if tool_choice in ("any", True):
            tool_choice = "required" if len(names) != 1 else names[0]
        if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "required"):
            if tool_choice not in names:
                raise ValueError(f"tool_choice {tool_choice!r} is not among the tools {names}")
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        if tool_choice is not None and tool_choice is not False:
            kwargs["tool_choice"] = tool_choice
        return super().bind(tools=formatted, **kwargs)

    def with_structured_output(
        self,
        schema: dict | type,
        *,
        method: str = "json_schema",
        include_raw: bool = False,
        **kwargs: Any,
    ):
        """Output that is `schema` (a pydantic model, a TypedDict or a JSON schema): by the
        grammar (`json_schema`, the default, or `json_mode`), or as a forced tool call
        (`function_calling`)."""
        if include_raw:
            raise ValueError("include_raw is not supported by ChatRadixKV")
        pydantic = isinstance(schema, type) and is_basemodel_subclass(schema)
        # what LangChain's callbacks and tracers are told about the structured output
        kwargs["ls_structured_output_format"] = {
            "kwargs": {"method": method},
            "schema": convert_to_openai_tool(schema)
            if method == "function_calling"
            else convert_to_json_schema(schema),
        }
        if method == "function_calling":
            tool = convert_to_openai_tool(schema)
            name = tool["function"]["name"]
            llm = self.bind_tools([tool], tool_choice=name, **kwargs)
            parser = (
                PydanticToolsParser(tools=[schema], first_tool_only=True)
                if pydantic
                else JsonOutputKeyToolsParser(key_name=name, first_tool_only=True)
            )
            return llm | parser
        if method == "json_mode":
            fmt = {"type": "json_object"}
        elif method == "json_schema":
            json_schema = convert_to_json_schema(schema)
            fmt = {
                "type": "json_schema",
                "json_schema": {"name": json_schema.get("title", "output"), "schema": json_schema},
            }
        else:
            raise ValueError(
                f"method must be json_schema, json_mode or function_calling, got {method!r}"
            )
        parser = PydanticOutputParser(pydantic_object=schema) if pydantic else JsonOutputParser()
        return self.bind(response_format=fmt, **kwargs) | parser
