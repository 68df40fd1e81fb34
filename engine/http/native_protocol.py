"""The native `/generate` request body: token ids (or text) in, SGLang's `sampling_params`
names, validated as strictly as the OpenAI bodies."""

from __future__ import annotations

from typing import Annotated

from pydantic import ConfigDict, Field, StrictStr, model_validator

from engine.http.field_types import (
    Body,
    Int,
    MaxTokens,
    NonEmptyStr,
    Seed,
    Stop,
    Temperature,
    TokenId,
    TopP,
    whole,
)


class NativeSampling(Body):
    """SGLang's `sampling_params` names."""

    max_new_tokens: MaxTokens = 128
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: whole(ge=-1, description="0 or -1: no limit") | None = None
    seed: Seed | None = None
    stop: Stop | None = None
    stop_token_ids: list[Int] | None = None
    ignore_eos: bool = False
    model_config = ConfigDict(
        json_schema_extra={  # at most one grammar
            "not": {
                "required": ["json_schema", "regex"],
                "properties": {"json_schema": {"type": "string"}, "regex": {"type": "string"}},
            }
        }
    )

    json_schema: NonEmptyStr | None = Field(None, description="a JSON Schema, as JSON text")
    regex: NonEmptyStr | None = None

    @model_validator(mode="after")
    def _one_grammar(self):
        if self.json_schema is not None and self.regex is not None:
            raise ValueError("give at most one of json_schema and regex")
        return self

    def sampling(self) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return {
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": None if self.top_k is None else max(self.top_k, 0),  # -1: no limit
            "grammar": (
                ("json_schema", self.json_schema)
                if self.json_schema is not None
                else ("regex", self.regex)
                if self.regex is not None
                else None
            ),
            "seed": self.seed,
            "stop": tuple(stop),
            "stop_token_ids": tuple(self.stop_token_ids or ()),
            "ignore_eos": self.ignore_eos,
        }


class GenerateRequest(Body):
    """Native `/generate`: token ids in (`input_ids`) or text (`text`), token ids out."""

    model_config = ConfigDict(
        json_schema_extra={  # exactly one of the two prompts, as the validator below says
            "oneOf": [
                {"required": [name], "properties": {name: {"not": {"type": "null"}}}}
                for name in ("input_ids", "text")
            ]
        }
    )

    input_ids: Annotated[list[TokenId], Field(min_length=1)] | None = None
    text: NonEmptyStr | None = None
    sampling_params: NativeSampling = Field(default_factory=NativeSampling)
    stream: bool = False
    rid: StrictStr | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.input_ids is None) == (self.text is None):
            raise ValueError("give exactly one of input_ids or text")
        return self
