"""`RadixKVLLM`, the LlamaIndex function-calling LLM over an in-process engine: a tool call made
with LlamaIndex's own FunctionTool, read back as a ToolSelection, and a plain chat and stream."""

from __future__ import annotations

import pytest

pytest.importorskip("llama_index.core")

from llama_index.core.base.llms.types import ChatMessage  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402

from radixkv.integrations.llama_index import RadixKVLLM  # noqa: E402
from tests.conftest import cpu_engine  # noqa: E402


def get_weather(city: str) -> str:
    """Get the current weather of a city."""
    return f"sunny in {city}"


def test_a_tool_call_and_a_chat_through_llama_index():
    with cpu_engine() as engine:
        llm = RadixKVLLM(engine=engine, max_tokens=48)
        assert llm.metadata.is_function_calling_model
        tool = FunctionTool.from_defaults(fn=get_weather)
        response = llm.chat_with_tools(
            [tool], user_msg="What is the weather in Paris?", tool_required=True
        )
        (call,) = llm.get_tool_calls_from_response(response)
        assert call.tool_name == "get_weather" and isinstance(call.tool_kwargs.get("city"), str)
        assert tool(**call.tool_kwargs).content.startswith("sunny in")
        reply = llm.chat([ChatMessage(role="user", content="Say hello.")])
        assert reply.message.content and reply.raw["usage"]["prompt_tokens"] > 0
        streamed = list(llm.stream_complete("One, two,"))
        assert streamed and streamed[-1].text == "".join(r.delta for r in streamed)
        with pytest.raises(ValueError, match="expected a tool call"):
            llm.get_tool_calls_from_response(reply)
