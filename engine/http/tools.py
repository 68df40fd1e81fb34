"""Tool calling: tools rendered into the prompt, the model's output parsed back into calls.

Rendering uses the model's own chat template when it takes a `tools` variable (and assistant
`tool_calls` / `tool` messages when it knows them). A template without tool support gets a
documented fallback in the Hermes convention most open models are trained on: the tool
signatures in a system message inside <tools></tools>, each call as
<tool_call>{"name": ..., "arguments": {...}}</tool_call>, each result as
<tool_response>...</tool_response> in a user turn.

Parsers, one per output family: `hermes` (Hermes, Qwen, and the fallback: <tool_call> JSON
blocks) and `llama3_json` (Llama 3.x: a bare JSON object, optionally after <|python_tag|>).
`auto` picks by what the template contains. `tool_choice` `required` or a named function is
enforced by a grammar (llguidance Lark with embedded JSON schemas), so the call always parses
and its arguments validate.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

from engine.config import TOOL_CALL_PARSERS as PARSERS
from engine.json_schema import close_objects, for_generation

_OPEN, _CLOSE = "<tool_call>", "</tool_call>"
_PYTHON_TAG = "<|python_tag|>"


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI sends it
    id: str

    def to_openai(self) -> dict:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def choose_parser(name: str, template: str | None) -> str:
    """The parser `name` names, or for `auto` the one the template's own markers suggest."""
    if name not in PARSERS:
        raise ValueError(f"tool call parser must be one of {', '.join(PARSERS)}, got {name!r}")
    if name != "auto":
        return name
    template = template or ""
    if _OPEN not in template and (_PYTHON_TAG in template or "ipython" in template):
        return "llama3_json"
    return "hermes"  # also what the fallback prompt asks for


def _for_template(template: str, messages: list[dict], tools: list[dict] | None):
    """(messages, tools) as the template takes them: its own tools, or the fallback's."""
    if "tools" in template:
        return messages, tools
    return _fallback_messages(messages, tools, "tool_calls" in template), None


def render(tokenizer, messages: list[dict], tools: list[dict] | None) -> str:
    """The prompt text of `messages` (OpenAI shape: tool_calls, tool results) offering `tools`
    (OpenAI `{"type": "function", "function": {...}}` entries; None: none offered)."""
    messages, tools = _for_template(tokenizer.chat_template or "", messages, tools)
    return tokenizer.apply_chat_template(messages, tools=tools)


def render_ids(
    tokenizer, messages: list[dict], tools: list[dict] | None, *, literal_content: bool = True
) -> list[int]:
    """`render`'s prompt as token ids; with `literal_content`, special tokens typed in a
    message are text (`Tokenizer.encode_chat`)."""
    messages, tools = _for_template(tokenizer.chat_template or "", messages, tools)
    return tokenizer.encode_chat(messages, tools=tools, literal_content=literal_content)


def _fallback_messages(messages: list[dict], tools: list[dict] | None, knows_calls: bool):
    out = []
    for m in messages:
        m = dict(m)
        if m["role"] == "assistant" and m.get("tool_calls") and not knows_calls:
            blocks = [
                _block(
                    json.dumps(
                        {
                            "name": c["function"]["name"],
                            "arguments": _loads(c["function"]["arguments"]),
                        }
                    )
                )
                for c in m.pop("tool_calls")
            ]
            m["content"] = "\n".join(filter(None, [m.get("content") or "", *blocks]))
        elif m["role"] == "tool":
            m = {"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"}
        out.append(m)
    if tools:
        offer = _fallback_system_text(tools)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{offer}"}
        else:
            out.insert(0, {"role": "system", "content": offer})
    return out


def _fallback_system_text(tools: list[dict]) -> str:
    signatures = "\n".join(json.dumps(t) for t in tools)
    return (
        "You can call functions to help answer. Their signatures, one JSON object per line, "
        f"are inside <tools></tools>:\n<tools>\n{signatures}\n</tools>\n\n"
        "To call one, answer with a JSON object holding its name and arguments inside "
        f"{_OPEN}{_CLOSE} tags, one block per call:\n"
        + _block('{"name": "function name", "arguments": {"argument": "value"}}')
    )


def _block(call_json: str) -> str:
    """One call as the hermes format writes it (`required_grammar` states the same in Lark)."""
    return f"{_OPEN}\n{call_json}\n{_CLOSE}"


def _loads(arguments):
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except ValueError:
            return arguments
    return arguments


def parse(text: str, parser: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
    """(content, tool calls) of a finished output; calls to functions not in `names` and
    malformed blocks stay in the content."""
    if parser == "llama3_json":
        return _parse_llama3(text, names)
    return _parse_hermes(text, names)


def _call(obj, names: set[str]) -> ToolCall | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, dict):
        return None
    return ToolCall(obj["name"], json.dumps(args), f"call_{uuid.uuid4().hex[:24]}")


_BLOCK = re.compile(re.escape(_OPEN) + r"\s*(.*?)\s*(?:" + re.escape(_CLOSE) + r"|$)", re.DOTALL)


def _parse_hermes(text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
    start = text.find(_OPEN)
    if start < 0:
        return text, []
    calls, rest = [], []
    for block in _BLOCK.finditer(text, start):
        try:
            call = _call(json.loads(block.group(1)), names)
        except ValueError:
            call = None
        if call is None:
            rest.append(block.group(0))
        else:
            calls.append(call)
    content = (text[:start].strip() + "".join(rest)).strip()
    return (content or None) if calls else text, calls


def _parse_llama3(text: str, names: set[str]) -> tuple[str | None, list[ToolCall]]:
    body = text.strip().removeprefix(_PYTHON_TAG).strip()
    if not body.startswith("{"):
        return text, []
    calls, decoder, at = [], json.JSONDecoder(), 0
    while at < len(body):
        try:
            obj, end = decoder.raw_decode(body, at)
        except ValueError:
            return text, []
        call = _call(obj, names)
        if call is None:
            return text, []
        calls.append(call)
        at = end
        while at < len(body) and body[at] in " \n\t;":
            at += 1
    return None, calls


def required_grammar(tools: list[dict], parser: str, parallel: bool = False) -> str:
    """A Lark grammar (llguidance) whose sentences are a call to one of `tools` in the
    parser's format (one or more calls with `parallel`), each call's arguments valid under its
    function's parameter schema. The grammar ends after the call, so the request stops there."""
    options = [
        {
            "type": "object",
            "properties": {
                "name": {"const": t["function"]["name"]},
                # closed like every generated object (engine/json_schema.py): a function with
                # no parameters gets {} and a small model invents no extra arguments
                "arguments": close_objects(t["function"].get("parameters") or {"type": "object"}),
            },
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    call = "call: %json " + json.dumps(for_generation({"anyOf": options}))  # compact
    if parser == "llama3_json":
        return f"start: call{'+' if parallel else ''}\n{call}"
    many = "+" if parallel else ""
    return f'start: block{many}\nblock: "{_OPEN}\\n" call "\\n{_CLOSE}"\n{call}'


class ToolStream:
    """Holds streamed text back while it may be a tool call: content before a call streams as
    usual; from the call's marker on, nothing streams until the output is parsed at the end."""

    def __init__(self, parser: str) -> None:
        self.parser, self.sent, self.holding = parser, 0, False

    def delta(self, text: str) -> str:
        """The part of the cumulative `text` that may stream now."""
        if self.holding:
            return ""
        if self.parser == "llama3_json":
            stripped = text.lstrip()
            if stripped[:1] in ("{", "<") or not stripped:
                self.holding = bool(stripped)
                return ""
        at = text.find(_OPEN, self.sent)
        if at >= 0:
            self.holding = True
            out, self.sent = text[self.sent : at], at
            return out
        safe = len(text)  # hold back a tail that may be the marker's start
        for k in range(min(len(_OPEN) - 1, len(text)), 0, -1):
            if _OPEN.startswith(text[-k:]):
                safe = len(text) - k
                break
        out, self.sent = text[self.sent : safe], max(self.sent, safe)
        return out
