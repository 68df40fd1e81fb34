"""A tool-using agent embedded in-process, over a long shared context, with and without the
prefix cache.

The agent answers questions about a ~1,500-token station log with three tools (look up a
reading, convert units, add numbers). Every step resends the whole conversation (log, question,
earlier calls and results), as agent frameworks do; with the cache only the new tokens are
computed. Each step prints what the model did, its prompt and cached tokens and its time to
first token, for both engines side by side. Default model, CPU.

    python examples/agent.py [--steps 6] [--context-tokens 1500]
"""

from __future__ import annotations

import argparse
import json
import sys

from radixkv import Engine

READINGS = {"north": 14.5, "south": 9.0, "east": 11.25, "west": 7.75}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "reading",
            "description": "The latest temperature reading (Celsius) of a station",
            "parameters": {
                "type": "object",
                "properties": {"station": {"type": "string", "enum": list(READINGS)}},
                "required": ["station"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "to_fahrenheit",
            "description": "Convert a Celsius temperature to Fahrenheit",
            "parameters": {
                "type": "object",
                "properties": {"celsius": {"type": "number"}},
                "required": ["celsius"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "add",
            "description": "Add two numbers",
            "parameters": {
                "type": "object",
                "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                "required": ["a", "b"],
            },
        },
    },
]
QUESTIONS = [
    "What is the north station's reading?",
    "Convert that reading to Fahrenheit.",
    "What is the south station's reading?",
    "Add the north and south readings.",
    "What is the east station's reading?",
    "Convert the east reading to Fahrenheit.",
]


def run_tool(call: dict) -> str:
    name, args = call["function"]["name"], json.loads(call["function"]["arguments"] or "{}")
    try:
        if name == "reading":
            return str(READINGS[args["station"]])
        if name == "to_fahrenheit":
            return f"{float(args['celsius']) * 9 / 5 + 32:.2f}"
        if name == "add":
            return str(float(args["a"]) + float(args["b"]))
    except (KeyError, ValueError, TypeError) as err:
        return f"error: {err}"
    return f"error: no tool {name}"


def station_log(engine: Engine, tokens: int) -> str:
    lines, i = [], 0
    while len(engine.tokenizer.encode(" ".join(lines))) < tokens:
        station = list(READINGS)[i % 4]
        lines.append(f"Entry {i}: the {station} station was serviced; its sensor was recalibrated.")
        i += 1
    return " ".join(lines)


def agent(engine: Engine, log: str, steps: int) -> list[dict]:
    """Each step: ask for one tool call (forced), run it, then let the model answer (it may
    call again; the example runs one call a step)."""
    session = engine.session(f"You operate weather stations. Station log: {log}")
    rows = []
    for question in QUESTIONS[:steps]:
        call = session.chat(question, tools=TOOLS, tool_choice="required", max_tokens=48)
        calls = call.tool_calls[:1]
        for c in calls:
            session.messages.append(
                {"role": "tool", "tool_call_id": c["id"], "content": run_tool(c)}
            )
        # the same tools offered: the prompt keeps the call step's prefix (cached)
        answer = session.chat(None, tools=TOOLS, max_tokens=24)
        rows.append(
            {
                "question": question,
                "call": f"{calls[0]['function']['name']}({calls[0]['function']['arguments']})"
                if calls
                else "-",
                "prompt": answer.prompt_tokens,
                "cached": answer.cached_tokens,
                "ttft_ms": answer.ttft_s * 1e3,
                "call_ttft_ms": call.ttft_s * 1e3,
                "call_cached": call.cached_tokens,
            }
        )
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--context-tokens", type=int, default=1500)
    args = p.parse_args()
    runs = {}
    for name, caching in (("cache", True), ("no cache", False)):
        with Engine(device="cpu", remote_url="none", prefix_caching=caching) as engine:
            log = station_log(engine, args.context_tokens)
            engine.chat([{"role": "user", "content": "Hi"}], max_tokens=1)  # warm-up
            runs[name] = agent(engine, log, args.steps)
    print(
        f"{'step':<5}{'tool call':<40}{'prompt':>7}{'cached (call/answer)':>22}"
        f"{'TTFT ms, cache':>18}{'no cache':>18}"
    )
    for i, (a, b) in enumerate(zip(runs["cache"], runs["no cache"], strict=True)):
        cached = f"{a['call_cached']}/{a['cached']}"
        with_cache = f"{a['call_ttft_ms']:,.0f}/{a['ttft_ms']:,.0f}"
        without = f"{b['call_ttft_ms']:,.0f}/{b['ttft_ms']:,.0f}"
        print(
            f"{i + 1:<5}{a['call'][:39]:<40}{a['prompt']:>7}{cached:>22}"
            f"{with_cache:>18}{without:>18}"
        )
    print("prompt: the answer step's prompt tokens; TTFT: the tool-call step / the answer step")
    return 0


if __name__ == "__main__":
    sys.exit(main())
