"""Tool calling without a model: the parsers read back what the formats write (any name,
any arguments), leave malformed or unknown calls in the content, the stream holds back exactly
the text that may be a call, and rendering offers the tools through a template that takes them
or through the documented fallback."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from engine.http.tools import ToolStream, choose_parser, parse, render, required_grammar

NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)
ARGS = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.one_of(st.integers(), st.text(max_size=10), st.booleans(), st.none()),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    calls=st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=3),
    before=st.text(max_size=20).filter(lambda t: "<tool_call>" not in t),
)
def test_hermes_blocks_parse_back(calls, before):
    text = before + "".join(
        f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>\n" for n, a in calls
    )
    content, got = parse(text, "hermes", {n for n, _ in calls})
    assert [(c.name, json.loads(c.arguments)) for c in got] == calls
    assert content == (before.strip() or None)
    assert all(c.id.startswith("call_") for c in got) and len({c.id for c in got}) == len(got)


@settings(max_examples=100, deadline=None)
@given(calls=st.lists(st.tuples(NAMES, ARGS), min_size=1, max_size=3), tag=st.booleans())
def test_llama3_json_parses_back(calls, tag):
    body = "; ".join(json.dumps({"name": n, "parameters": a}) for n, a in calls)
    content, got = parse(
        ("<|python_tag|>" if tag else "") + body, "llama3_json", {n for n, _ in calls}
    )
    assert content is None and [(c.name, json.loads(c.arguments)) for c in got] == calls


def test_what_is_not_a_call_stays_content():
    names = {"get_weather"}
    assert parse("Just text.", "hermes", names) == ("Just text.", [])
    bad = 'Sure.<tool_call>\n{"name": "get_weather", "arguments": \n</tool_call>'
    assert parse(bad, "hermes", names) == (bad, [])  # malformed JSON: no call
    other = '<tool_call>\n{"name": "launch", "arguments": {}}\n</tool_call>'
    assert parse(other, "hermes", names) == (other, [])  # not an offered tool
    assert parse('{"a": 1}', "llama3_json", names) == ('{"a": 1}', [])
    # an unterminated last block (the model stopped at its end-of-turn) still counts
    content, calls = parse('<tool_call>\n{"name": "get_weather", "arguments": {}}', "hermes", names)
    assert content is None and calls[0].name == "get_weather"


@settings(max_examples=150, deadline=None)
@given(
    before=st.text(max_size=30).filter(lambda t: "<" not in t),
    cut=st.integers(0, 200),
    call=st.booleans(),
)
def test_the_stream_holds_back_only_what_may_be_a_call(before, cut, call):
    marker = '<tool_call>\n{"name": "f", "arguments": {}}\n</tool_call>' if call else " done"
    full = before + marker
    stream, sent = ToolStream("hermes"), ""
    for end in sorted({min(cut, len(full)), len(full)}):
        sent += stream.delta(full[:end])
    if call:
        assert sent == before  # all the content, not one character of the call
    else:
        assert full.startswith(sent) and sent + full[stream.sent :] == full


def test_rendering_through_a_template_with_tools_and_through_the_fallback():
    class Tok:
        bos_token = eos_token = ""

        def __init__(self, template):
            self.chat_template = template

        def apply_chat_template(self, messages, tools=None):
            from engine.tokenizer import Tokenizer

            return Tokenizer.apply_chat_template(self, messages, tools=tools)

    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    native = Tok(
        "{% for t in tools %}TOOL {{ t.function.name }};{% endfor %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }};{% endfor %}"
    )
    assert render(native, [{"role": "user", "content": "hi"}], tools) == "TOOL f;user: hi;"
    chatml = Tok("{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}")
    history = [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": '{"x": 1}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]
    text = render(chatml, history, tools)
    assert text.startswith("<system>") and '"name": "f"' in text.split("</system>")[0]
    assert (
        '<assistant><tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call></assistant>'
        in text
    )
    assert "<user><tool_response>\nsunny\n</tool_response></user>" in text
    assert choose_parser("auto", chatml.chat_template) == "hermes"
    assert choose_parser("auto", "{{ '<|python_tag|>' }}") == "llama3_json"
    assert "%json" in required_grammar(tools, "hermes")


def test_a_template_that_refuses_messages_is_a_value_error():
    import pytest

    from engine.tokenizer import Tokenizer

    class Tok:
        bos_token = eos_token = ""
        chat_template = (
            "{% for m in messages %}{% if m.role == 'tool' %}"
            "{{ raise_exception('no tool role here') }}{% endif %}{{ m.content }}{% endfor %}"
            "{{ undefined_thing.attribute }}"
        )

    with pytest.raises(ValueError, match="no tool role here"):
        Tokenizer.apply_chat_template(Tok(), [{"role": "tool", "content": "x"}])
    with pytest.raises(ValueError, match="cannot render"):
        Tokenizer.apply_chat_template(Tok(), [{"role": "user", "content": "x"}])
