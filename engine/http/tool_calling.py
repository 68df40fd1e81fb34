"""What one chat request asks of tool calling: the tools its prompt offers, the functions its
output may call, the parser that reads them back, and the grammar that enforces a call when
`tool_choice` is `required` or names a function."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.http import tools


@dataclass(frozen=True)
class ToolCalling:
    offered: list[dict] | None = None  # rendered into the prompt (None: no tools)
    names: frozenset[str] = field(default_factory=frozenset)  # what the output may call
    parser: str = "hermes"
    grammar: tuple[str, str] | None = None  # ("lark", ...) forcing a call, or None

    @classmethod
    def of(cls, body, tokenizer, parser_flag: str) -> ToolCalling:
        """From a ChatCompletionRequest: `tool_choice` none (tools left out of the prompt),
        auto (the default with tools: calls parsed when the model makes them), required or a
        function's name (a call forced by the grammar)."""
        offered = body.offered_tools()
        choice = body.tool_choice_name or ("auto" if offered else "none")
        parser = tools.choose_parser(parser_flag, tokenizer.chat_template)
        if not offered or choice == "none":
            return cls(parser=parser)
        chosen = (
            offered
            if choice in ("auto", "required")
            else [t for t in offered if t["function"]["name"] == choice]
        )
        # a forced call is one call, several only when asked for (small models repeat calls)
        parallel = choice == "required" and body.parallel_tool_calls is True
        grammar = (
            None if choice == "auto" else ("lark", tools.required_grammar(chosen, parser, parallel))
        )
        names = frozenset(t["function"]["name"] for t in chosen)
        return cls(offered, names, parser, grammar)

    def parse(self, text: str) -> tuple[str | None, list[tools.ToolCall]]:
        """(content, calls) of the finished output."""
        if not self.offered:
            return text, []
        return tools.parse(text, self.parser, set(self.names))

    def stream(self) -> tools.ToolStream | None:
        return tools.ToolStream(self.parser) if self.offered else None
