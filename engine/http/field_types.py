"""The field types request bodies are built of: strict integers within bounds, token ids,
sampling values, flags that accept only false or null, and the strict base body.

Every rule is a field constraint, so the OpenAPI document generated from the bodies states
exactly what is validated.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    WithJsonSchema,
    model_validator,
)


def whole_number(value):
    """JSON Schema counts 1.0 as an integer, so the server does too (and no other float)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


MAX_CHOICES = 16  # n, and prompts in one completions call
SEED_RANGE = (-(2**53), 2**53)  # exact as JSON numbers in any client (and as doubles)


def whole(**bounds) -> type:
    """An integer (never a bool, a string or 1.5) within `bounds` (Field's ge, le, ...); the
    bounds sit on the strict type itself so that the schema states them as JSON Schema does."""
    return Annotated[StrictInt, Field(**bounds), BeforeValidator(whole_number)]


Int = whole()
NonEmptyStr = Annotated[StrictStr, Field(min_length=1)]
# a token id: the doc adds the vocabulary's upper bound where it finds the mark
TokenId = whole(ge=0, json_schema_extra={"x-token-id": True})
Temperature = Annotated[float, Field(ge=0, description="0 (or below 1e-5) is greedy")]
TopP = Annotated[float, Field(gt=0, le=1)]
Seed = whole(ge=SEED_RANGE[0], le=SEED_RANGE[1])
MaxTokens = whole(ge=1)  # prompt plus max_tokens must fit the context: checked per request
Stop = NonEmptyStr | Annotated[list[NonEmptyStr], Field(max_length=64)]


def only_false(value: bool) -> bool:
    if value:
        raise ValueError("not supported: only false")
    return value


# A flag whose `true` is not supported yet (Literal[False] would let a JSON 0 through)
OnlyFalse = Annotated[
    StrictBool, AfterValidator(only_false), WithJsonSchema({"type": "boolean", "const": False})
]


def only_null(value: object) -> None:
    if value is not None:
        raise ValueError("not supported: only null")
    return value


# A field whose values are not supported yet: given, anything but null is a 400 naming it
OnlyNull = Annotated[Any, AfterValidator(only_null), WithJsonSchema({"type": "null"})]


def invalid_text(value, path: tuple[str, ...] = ()) -> tuple[str, ...] | None:
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
        if isinstance(key, str) and invalid_text(key) is not None:
            return where
        found = invalid_text(item, where)
        if found is not None:
            return found
    return None


class Body(BaseModel):
    """A request body: strict types, unknown fields ignored, text checked for valid Unicode."""

    model_config = ConfigDict(strict=True, extra="ignore", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        """Text that cannot reach the tokenizer or a log is a 400 naming its field, not a 500."""
        where = invalid_text(data)
        if where is not None:
            # the path may hold the bad key itself: escaped, or the error could not be sent
            field = ".".join(where).encode("utf-8", "backslashreplace").decode() or "body"
            raise ValueError(f"{field} is not valid Unicode text (a lone UTF-16 surrogate)")
        return data
