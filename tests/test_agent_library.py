"""The embedded library speaks agents' language: tools, tool_choice and response_format on
`Engine.chat` and `Session.chat` (the server's code), closed object schemas, and async calls
on the engine thread whose cancellation frees the request's pages. Default model, CPU."""

from __future__ import annotations

import asyncio
import json

import pytest

from engine.json_schema import close_objects, for_generation
from tests.conftest import cpu_engine

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather of a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}


@pytest.fixture(scope="module")
def eng():
    with cpu_engine() as e:
        yield e


def test_objects_are_closed_unless_the_schema_says_otherwise():
    schema = {
        "type": "object",
        "properties": {
            "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "b": {"type": "array", "items": {"type": "object", "properties": {"y": {}}}},
            "c": {"type": "object", "additionalProperties": True, "required": []},
        },
        "$defs": {"d": {"type": "object", "properties": {"z": {}}, "required": ["z"]}},
    }
    out = close_objects(schema)
    assert out["additionalProperties"] is False and out["required"] == ["a", "b", "c"]
    assert out["properties"]["a"]["additionalProperties"] is False
    assert out["properties"]["b"]["items"]["required"] == ["y"]
    assert out["properties"]["c"] == {
        "type": "object",
        "additionalProperties": True,
        "required": [],
    }
    assert out["$defs"]["d"]["required"] == ["z"]
    assert "additionalProperties" not in schema  # a copy: the caller's schema is left alone
    assert for_generation(schema)["x-guidance"] == {"whitespace_flexible": False}
    assert for_generation({"x-guidance": {"whitespace_flexible": True}})["x-guidance"] == {
        "whitespace_flexible": True
    }


def test_a_tool_call_round_trip_through_a_session(eng):
    session = eng.session("You can look up the weather with tools.")
    first = session.chat("What is the weather in Paris?", tools=[WEATHER], tool_choice="required")
    (call,) = first.tool_calls
    assert call["type"] == "function" and call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"]).get("city"), str)
    assert session.messages[-1]["tool_calls"] == first.tool_calls
    session.messages.append({"role": "tool", "tool_call_id": call["id"], "content": "18 C, sun"})
    second = session.chat(None, tools=[WEATHER], max_tokens=24)
    assert second.finish_reason in ("stop", "length") and second.prompt_tokens > first.prompt_tokens
    assert second.cached_tokens >= first.prompt_tokens // 16 * 16  # the turn before, cached
    with pytest.raises(ValueError, match="tool_choice"):
        eng.chat([{"role": "user", "content": "hi"}], tools=[WEATHER], tool_choice="missing")


def test_structured_output_has_exactly_the_declared_keys(eng):
    """The issue's case: {"name", "age"} with no additionalProperties, 80 tokens, the model's
    own sampling defaults, ten seeds: ten objects with exactly those keys."""
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}
    for seed in range(10):
        r = eng.chat(
            [{"role": "user", "content": "Describe a person as JSON with a name and an age."}],
            response_format=fmt,
            max_tokens=80,
            seed=seed,
        )
        assert isinstance(r.parsed, dict) and set(r.parsed) == {"name", "age"}, r.text
        assert isinstance(r.parsed["age"], int) and r.text == json.dumps(
            r.parsed, separators=(",", ":")
        )


def test_async_generate_chat_and_a_cancelled_stream_leave_no_page_locked(eng):
    async def main():
        results = await eng.agenerate(["The capital of France is", "One, two,"], max_tokens=4)
        reply = await eng.achat([{"role": "user", "content": "Say hi."}], max_tokens=4)
        chunks = []

        async def consume():
            async for chunk in eng.astream("Count from one to a hundred:", max_tokens=200):
                chunks.append(chunk)

        task = asyncio.create_task(consume())
        while not chunks:
            await asyncio.sleep(0.01)
        task.cancel()  # the awaiting task goes away mid-stream
        with pytest.raises(asyncio.CancelledError):
            await task
        running = await eng.loop.call(
            lambda: len(eng.scheduler.running) + len(eng.scheduler.waiting)
        )
        locked = await eng.loop.call(lambda: eng.cache.check_integrity()["device"]["locked"])
        return results, reply, chunks, running, locked

    results, reply, chunks, running, locked = asyncio.run(main())
    assert [len(r.token_ids) for r in results] == [4, 4] and reply.finish_reason in (
        "stop",
        "length",
    )
    assert 0 < sum(len(c.token_ids) for c in chunks) < 200
    assert running == 0 and locked == 0  # the cancelled request was aborted, its pages freed
