"""Request bodies of the HTTP API, validated strictly: a wrong type is an error, never coerced.

OpenAI-compatible completions and chat completions, and the native token-id `/generate`
(SGLang's field names). Fields a client may send that change nothing here (`user`,
`stream_options` without usage, ...) are accepted and ignored; fields that would change the
output and are not supported (n > 1, logprobs, penalties) are rejected by name.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator


def _invalid_text(value, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
    """The path of the first string (key or value) that is not valid Unicode, e.g. holding a
    lone UTF-16 surrogate that JSON's \\ud800 escapes can carry; None when all are valid."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return path
        return None
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        where = (*path, str(key))
        if isinstance(key, str) and _invalid_text(key) is not None:
            return where
        found = _invalid_text(item, where)
        if found is not None:
            return found
    return None


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        """Text that cannot reach the tokenizer or a log is a 400 naming its field, not a 500."""
        where = _invalid_text(data)
        if where is not None:
            field = ".".join(where) or "body"
            raise ValueError(f"{field} is not valid Unicode text (a lone UTF-16 surrogate)")
        return data


class StreamOptions(_Body):
    include_usage: bool = False


class _OpenAISampling(_Body):
    model: StrictStr
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # extension (vLLM and SGLang accept it too)
    seed: int | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None  # extension
    ignore_eos: bool = False  # extension
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    logprobs: bool | int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    @model_validator(mode="after")
    def _unsupported(self):
        if self.n != 1:
            raise ValueError("n must be 1: one completion per request is supported")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        if self.presence_penalty != 0 or self.frequency_penalty != 0:
            raise ValueError("presence_penalty and frequency_penalty are not supported (use 0)")
        return self

    def sampling(self, max_tokens: int) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return {
            "max_tokens": max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "seed": self.seed,
            "stop": tuple(stop),
            "stop_token_ids": tuple(self.stop_token_ids or ()),
            "ignore_eos": self.ignore_eos,
        }

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(_OpenAISampling):
    prompt: StrictStr | Annotated[list[StrictInt], Field(min_length=1)]
    max_tokens: int | None = 16  # OpenAI's default for completions
    echo: bool = False

    @model_validator(mode="after")
    def _no_echo(self):
        if self.echo:
            raise ValueError("echo is not supported")
        return self


class TextPart(_Body):
    type: Literal["text"]
    text: StrictStr


class ChatMessage(_Body):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: StrictStr | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatCompletionRequest(_OpenAISampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: int | None = None  # None: up to the end of the context
    max_completion_tokens: int | None = None

    def chat_messages(self) -> list[dict]:
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

    @property
    def requested_max_tokens(self) -> int | None:
        return (
            self.max_completion_tokens
            if self.max_completion_tokens is not None
            else self.max_tokens
        )


class NativeSampling(_Body):
    """SGLang's `sampling_params` names."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: StrictStr | list[StrictStr] | None = None
    stop_token_ids: list[StrictInt] | None = None
    ignore_eos: bool = False

    def sampling(self) -> dict:
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or ())
        return {
            "max_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": max(self.top_k, 0),  # SGLang uses -1 for "no limit"
            "seed": self.seed,
            "stop": tuple(stop),
            "stop_token_ids": tuple(self.stop_token_ids or ()),
            "ignore_eos": self.ignore_eos,
        }


class GenerateRequest(_Body):
    """Native `/generate`: token ids in (`input_ids`) or text (`text`), token ids out."""

    input_ids: Annotated[list[StrictInt], Field(min_length=1)] | None = None
    text: StrictStr | None = None
    sampling_params: NativeSampling = Field(default_factory=NativeSampling)
    stream: bool = False
    rid: StrictStr | None = None

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.input_ids is None) == (self.text is None):
            raise ValueError("give exactly one of input_ids or text")
        return self
