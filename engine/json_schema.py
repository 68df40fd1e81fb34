"""What a JSON schema means for structured output here: objects are closed, output is compact.

An object schema that leaves `additionalProperties` unset allows only its declared properties
(as OpenAI's strict mode and vLLM's guidance backend do): a small model given `{"name", "age"}`
otherwise adds keys until max_tokens cuts it. One that leaves `required` unset requires every
declared property (OpenAI's strict mode requires them listed): asked for two fields, the output
has those two. Set `"additionalProperties": true` (or a schema) to allow more keys, and
`required` to the keys that must appear to make others optional. Whitespace between tokens is
compact (no newlines or runs of spaces) unless the schema's own `x-guidance` options say
otherwise.
"""

from __future__ import annotations

from typing import Any

# keywords whose value is one subschema / a list of subschemas / a map of name -> subschema
_ONE = ("items", "additionalItems", "contains", "not", "if", "then", "else", "propertyNames")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")
_COMPACT = {"whitespace_flexible": False}


def for_generation(schema: Any) -> Any:
    """The schema the grammar is built from: objects closed, compact whitespace (a copy)."""
    out = close_objects(schema)
    if isinstance(out, dict):
        out["x-guidance"] = {**_COMPACT, **out.get("x-guidance", {})}
    return out


def close_objects(schema: Any) -> Any:
    """A copy of `schema` where every object schema that leaves `additionalProperties` (and
    `patternProperties`) unset gets `additionalProperties: false`, and one that leaves
    `required` unset requires all its properties."""
    if isinstance(schema, list):
        return [close_objects(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    for key in _ONE:
        if isinstance(out.get(key), (dict, list)):
            out[key] = close_objects(out[key])
    for key in _MANY:
        if isinstance(out.get(key), list):
            out[key] = [close_objects(s) for s in out[key]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {name: close_objects(s) for name, s in out[key].items()}
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = close_objects(out["additionalProperties"])
    is_object = out.get("type") == "object" or (
        isinstance(out.get("type"), list) and "object" in out["type"]
    )
    if (
        (is_object or "properties" in out)
        and "additionalProperties" not in out
        and "patternProperties" not in out
    ):
        out["additionalProperties"] = False
    if isinstance(out.get("properties"), dict) and "required" not in out:
        out["required"] = list(out["properties"])
    return out
