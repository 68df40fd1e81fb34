"""Agent frameworks end to end against the server: LangChain's ChatOpenAI (`bind_tools`,
`with_structured_output` in json_schema mode) and litellm's `completion` with tools. Skipped when
a framework is not installed (both are dev dependencies)."""

from __future__ import annotations

import os

import pytest

from tests.conftest import cpu_engine
from tests.live_server import live_server

MODEL = "SmolLM2-135M-Instruct"
CITY = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather in a city", "parameters": CITY},
}


@pytest.fixture(scope="module")
def url():
    engine = cpu_engine(kv_memory_gb=0.1)
    with engine as eng, live_server(eng) as (base, _loop):
        yield base + "/v1"


def test_langchain_bind_tools_and_structured_output(url):
    lc = pytest.importorskip("langchain_openai")
    llm = lc.ChatOpenAI(model=MODEL, base_url=url, api_key="unused", temperature=0, max_tokens=80)
    msg = llm.bind_tools([WEATHER], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    (call,) = msg.tool_calls
    assert call["name"] == "get_weather" and isinstance(call["args"]["city"], str)
    person = {
        "title": "Person",
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    structured = llm.with_structured_output(person, method="json_schema")
    got = structured.invoke("Invent a person: give a name and an age.")
    assert set(got) == {"name", "age"} and isinstance(got["age"], int)


def test_litellm_completion_with_tools(url):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
    litellm = pytest.importorskip("litellm")
    r = litellm.completion(
        model=f"openai/{MODEL}",
        api_base=url,
        api_key="unused",
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=80,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.function.name == "get_weather" and '"city"' in call.function.arguments
