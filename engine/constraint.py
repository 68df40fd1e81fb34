"""Grammar-constrained decoding (structured output) with llguidance: a JSON schema, any JSON
object, a regular expression or a Lark grammar becomes a token mask applied to a request's
logits at every step, so what it generates always parses and validates.

`Grammars` is built once per engine (the tokenizer's token table, ~1 s) and caches compiled
grammars; each constrained request owns one `Constraint` (its matcher state). Without
llguidance installed, a constrained request is refused with a clear error.
"""

from __future__ import annotations

import json
import logging
from functools import lru_cache

import torch

from engine.json_schema import for_generation
from engine.sampling import GRAMMAR_KINDS

log = logging.getLogger(__name__)

_LABEL = {  # what an error names
    "json_schema": "json schema",
    "json_object": "json object",
    "regex": "regex",
    "lark": "tool call grammar (check the tools' parameter schemas)",
}


class Constraint:
    """One request's grammar state: masks logits before sampling, advances on each token.

    Should the matcher fail (llguidance refuses a token its own mask allowed, as it does for
    some regexes over characters beyond the Basic Multilingual Plane), the request stops there
    with what it has (`failed` says why, and the log) instead of failing the engine step."""

    def __init__(self, matcher, vocab_size: int) -> None:
        import llguidance.torch as llt

        self._llt = llt
        self.matcher = matcher
        self.bitmask = llt.allocate_token_bitmask(1, vocab_size)
        self.failed: str | None = None

    def mask(self, logits: torch.Tensor) -> None:
        """Set the logits of tokens the grammar forbids next to -inf, in place ([vocab] row)."""
        if self.failed is not None:
            return  # stopping this step: whatever is sampled is dropped with the request
        self._llt.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        bitmask = self.bitmask.to(logits.device, non_blocking=True)
        self._llt.apply_token_bitmask_inplace(logits[None], bitmask)

    def advance(self, token: int) -> None:
        if self.failed is None and not self.matcher.consume_token(token):
            self.failed = self.matcher.get_error().splitlines()[0]
            log.warning("structured output stopped: the grammar refused a token (%s)", self.failed)

    @property
    def finished(self) -> bool:
        """The grammar is complete, or failed: nothing may follow (the request stops)."""
        return self.failed is not None or self.matcher.is_stopped()


class Grammars:
    """Compiles grammars for one tokenizer and hands out a `Constraint` per request."""

    def __init__(self, tokenizer, vocab_size: int, eos_token_id: int | None) -> None:
        try:
            import llguidance
        except ImportError as err:  # pragma: no cover - a dependency of the package
            raise RuntimeError(
                "structured output needs llguidance (pip install llguidance)"
            ) from err
        self._ll = llguidance
        self.vocab_size = vocab_size
        self.tokenizer = llguidance.LLTokenizer(
            tokenizer.to_json(), n_vocab=vocab_size, eos_token=eos_token_id
        )
        self._grammar = lru_cache(maxsize=256)(self._compile)  # the same schema: compiled once

    def _compile(self, kind: str, spec: str) -> str:
        M = self._ll.LLMatcher
        if kind == "json_schema":
            try:
                schema = json.loads(spec)
            except ValueError as err:
                raise ValueError(f"invalid json schema: not JSON text ({err})") from None
            grammar = M.grammar_from_json_schema(for_generation(schema))
        elif kind == "json_object":
            # any object: its keys are the model's to choose (still compact)
            grammar = M.grammar_from_json_schema(
                for_generation({"type": "object", "additionalProperties": True})
            )
        elif kind == "regex":
            grammar = M.grammar_from_regex(spec)
        elif kind == "lark":
            grammar = M.grammar_from_lark(spec)
        else:
            raise ValueError(
                f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, got {kind!r}"
            )
        error = M.validate_grammar(grammar, self.tokenizer)  # "" when valid
        if error:
            raise ValueError(f"invalid {_LABEL[kind]}: {error.strip()}")
        return grammar

    def constraint(self, kind: str, spec: str) -> Constraint:
        """A fresh matcher for `kind` (json_schema, json_object, regex) and its spec; ValueError
        naming what is wrong with an invalid one."""
        matcher = self._ll.LLMatcher(self.tokenizer, self._grammar(kind, spec), log_level=0)
        if matcher.is_error():
            raise ValueError(f"invalid {_LABEL[kind]}: {matcher.get_error()}")
        return Constraint(matcher, self.vocab_size)
