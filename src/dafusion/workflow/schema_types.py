"""The schema's types applied to a config's values: strings from the command line read as
the type a key takes, and a value no alternative of a key takes described in words.

Snakemake hands a nested `--config` value (`'model={resolution: 16}'`) and a top-level
`false` or `null` over as strings; only the schema knows what each should be. Used by
`dafusion.workflow.config.validate_config` before it validates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jsonschema


class NotOfType(ValueError):
    """A string no type of its key reads (validate_config raises it as a ConfigError)."""


def dotted_key(path: Iterable[object]) -> str:
    """A key's place in the config as a dotted path (`model.resolution`)."""
    return ".".join(str(p) for p in path) or "<top level>"


# Non-string readings of a `--config` value, in the order they are tried: Snakemake reads a
# nested `--config` value and a top-level `false` or `null` as YAML without types, i.e. as
# strings, and the schema is what knows the type.
_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def _read_boolean(text: str) -> bool:
    if text.lower() not in ("true", "false"):
        raise ValueError(text)
    return text.lower() == "true"


def _read_null(text: str) -> None:
    if text.lower() not in ("null", "~"):
        raise ValueError(text)


def _read_number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


_READERS: dict[str, Callable[[str], Any]] = {
    "boolean": _read_boolean,
    "null": _read_null,
    "integer": int,
    "number": _read_number,
}


def _alternatives(schema: Mapping, root: Mapping) -> list[Mapping]:
    """The schema and its oneOf/anyOf alternatives, `$ref`s (`#/a/b`) resolved."""
    while "$ref" in schema:
        target = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        schema = target
    nested = [*schema.get("oneOf", []), *schema.get("anyOf", [])]
    return [schema, *(alt for sub in nested for alt in _alternatives(sub, root))]


def _types(schema: Mapping) -> set[str] | None:
    """The JSON types one alternative allows: None for any, empty when only its own
    alternatives say."""
    if "type" in schema:
        return {schema["type"]} if isinstance(schema["type"], str) else set(schema["type"])
    values = [schema["const"]] if "const" in schema else schema.get("enum")
    if values is not None:
        return {_JSON_TYPES[type(v)] for v in values}
    return set() if {"oneOf", "anyOf"} & set(schema) else None


def coerce_config(value: Any, schema: Mapping, root: Mapping, path: tuple = ()) -> Any:
    """`value` with every string the schema types otherwise read as that type (`"16"` as 16
    where an integer is expected, `"False"` as false, `"null"` as null), recursively.

    Raises NotOfType naming the key and the expected type when no reading fits."""
    alternatives = _alternatives(schema, root)
    if isinstance(value, dict):
        objects = (a for a in alternatives if "properties" in a or "additionalProperties" in a)
        alt = next(objects, None)
        if alt is None:
            return value
        subs = {k: alt.get("properties", {}).get(k, alt.get("additionalProperties")) for k in value}
        return {
            k: coerce_config(v, subs[k], root, (*path, k)) if isinstance(subs[k], Mapping) else v
            for k, v in value.items()
        }
    if isinstance(value, list):
        items = next((alt["items"] for alt in alternatives if "items" in alt), None)
        if items is None:
            return value
        return [coerce_config(v, items, root, (*path, i)) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    allowed: set[str] = set()
    for alt in alternatives:
        types = _types(alt)
        if types is None:
            return value
        allowed |= types
    for name, read in _READERS.items():
        if name in allowed:
            try:
                return read(value)
            except ValueError:
                pass
    if "string" in allowed or not allowed:
        return value
    expected = " or ".join(sorted(allowed))
    raise NotOfType(f"config key '{dotted_key(path)}': {value!r} is not of type {expected}")


def _describe(schema: Mapping) -> str:
    """One alternative of a oneOf/anyOf in words: "an integer >= 1", "'all'"."""
    if "const" in schema:
        return repr(schema["const"])
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    kind = schema.get("type")
    words = {
        "integer": "an integer",
        "number": "a number",
        "string": "a string",
        "boolean": "true or false",
        "array": "a list",
        "object": "a mapping",
        "null": "null",
    }
    text = words.get(kind, "a value") if isinstance(kind, str) else "a value"
    bounds = [
        f"{sign} {schema[key]}"
        for key, sign in (
            ("minimum", ">="),
            ("exclusiveMinimum", ">"),
            ("maximum", "<="),
            ("exclusiveMaximum", "<"),
        )
        if key in schema
    ]
    return f"{text} {' and '.join(bounds)}" if bounds else text


def schema_message(err: jsonschema.ValidationError) -> str:
    """A schema error in words: for a value none of several alternatives takes ("not valid
    under any of the given schemas"), what each alternative is."""
    if err.validator in ("oneOf", "anyOf") and isinstance(err.validator_value, list):
        wanted = " or ".join(_describe(alt) for alt in err.validator_value)
        inner = [e for e in err.context if e.relative_path]  # inside the value: say where
        where = (
            f" ({inner[0].message} at item {dotted_key(inner[0].relative_path)})" if inner else ""
        )
        return f"{err.instance!r} is not {wanted}{where}"
    return err.message
