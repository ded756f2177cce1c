"""The configuration reference, generated from the schema's descriptions.

    python -m dafusion.workflow.schema_docs > docs/configuration-reference.md
    python -m dafusion.workflow.schema_docs --output docs/configuration-reference.md
    python -m dafusion.workflow.schema_docs --check docs/configuration-reference.md  # 1: stale

Every key of the schema (`dafusion.workflow.config.SCHEMA`:
src/dafusion/workflow/config.schema.yaml) becomes a table row with its type or allowed
values, its default and its description; per-entry
sections (`datasets`, `methods`) are listed as `datasets.<name>.key`.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from dafusion.workflow.config import JOB_CHECKS, PER_ENTRY, SCHEMA, load_schema

REFERENCE = "docs/configuration-reference.md"
COMMAND = (
    ".venv/bin/python -m dafusion.workflow.schema_docs --output docs/configuration-reference.md"
)


def _yaml(value: Any) -> str:
    """A value as a config file would write it, in flow style."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=math.inf)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _code(value: Any) -> str:
    return f"`{_yaml(value)}`"


def _bounds(node: Mapping) -> str:
    parts = []
    for key, sign in (
        ("minimum", "≥"),
        ("exclusiveMinimum", ">"),
        ("maximum", "≤"),
        ("exclusiveMaximum", "<"),
    ):
        if key in node:
            parts.append(f"{sign} {_yaml(node[key])}")
    return ", ".join(parts)


def describe_type(node: Mapping) -> str:
    """A short text for a schema node's type: `integer ≥ 1`, one of `a`, `b`, ..."""
    if "$ref" in node:
        section = node["$ref"].rsplit("/", 1)[-1]
        return f"mapping: keys of [`{section}`](#{section})"
    if "const" in node:
        return _code(node["const"])
    if "enum" in node:
        return "one of " + ", ".join(_code(v) for v in node["enum"])
    if "oneOf" in node:
        return " or ".join(describe_type(option) for option in node["oneOf"])
    types = node.get("type")
    if isinstance(types, list):
        texts = [describe_type({**node, "type": t}) for t in types]
        return " or ".join(texts)
    if types == "array":
        text = "list"
        if node.get("minItems", 0) >= 1:
            text = "non-empty list"
        if node.get("uniqueItems"):
            text += " of unique"
        else:
            text += " of"
        return f"{text} {describe_type(node.get('items', {}))}"
    if types == "object":
        extra = node.get("additionalProperties")
        if isinstance(extra, Mapping) and "properties" not in extra:
            return f"mapping: name → {describe_type(extra)}"
        return "mapping"
    if types == "null":
        return "null"
    text = types or "any"
    if "pattern" in node:
        text += f" matching `{node['pattern']}`"
    if node.get("minLength", 0) >= 1:
        text = f"non-empty {text}"
    bounds = _bounds(node)
    return f"{text} {bounds}" if bounds else text


def _default(node: Mapping, required: bool, condition: str | None) -> str:
    if "default" in node:
        return _code(node["default"])
    if required:
        return "required"
    if condition:
        return f"required {condition}"
    return "—"


def _text(description: str) -> str:
    return " ".join(description.split())


def _cell(text: str) -> str:
    """A table cell: `|` escaped (GitHub needs it escaped inside code spans too)."""
    return text.replace("|", "\\|")


def _sentence(text: str) -> str:
    text = _text(text)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _rows(node: Mapping, prefix: str) -> Iterator[tuple[str, Mapping, bool, str | None]]:
    """(dotted key, node, required, condition) for every property under `node`, in order."""
    required = set(node.get("required", ()))
    conditional: dict[str, str] = {}
    condition = node.get("if", {}).get("properties", {})
    for name in node.get("then", {}).get("required", ()):
        for key, test in condition.items():
            conditional[name] = f"when `{key}` is {_code(test.get('const'))}"
    for name, sub in node.get("properties", {}).items():
        key = f"{prefix}.{name}" if prefix else name
        yield key, sub, name in required, conditional.get(name)
        if "properties" in sub and "$ref" not in sub:
            yield from _rows(sub, key)


def _table(node: Mapping, prefix: str) -> list[str]:
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    for key, sub, required, condition in _rows(node, prefix):
        cells = [f"`{key}`", describe_type(sub), _default(sub, required, condition)]
        cells.append(_text(sub.get("description", "")))
        lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    return lines


def render(schema: Mapping) -> str:
    """The reference page (Markdown) of a loaded schema."""
    top = schema["properties"]
    required = set(schema.get("required", ()))
    lines = [
        "# Configuration reference",
        "",
        "Every key of the workflow's configuration, generated from the descriptions in",
        "`src/dafusion/workflow/config.schema.yaml`. Do not edit this page: edit the schema, then",
        "run",
        "",
        "```bash",
        COMMAND,
        "```",
        "",
        "(a test fails when this page is stale). What the sections do and how the settings",
        "work together: [configuration.md](configuration.md).",
        "",
        _sentence(schema.get("description", "")),
        'A key marked "execution knob" changes how fast or where jobs run, not their results:',
        "changing it reruns nothing",
        "([usage.md](usage.md#result-settings-and-execution-knobs)).",
        "",
        "## Top-level keys",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
    ]
    sections = []
    for name, node in top.items():
        nested = "properties" in node or name in PER_ENTRY
        kind = describe_type(node)
        if name in PER_ENTRY:
            kind = f"mapping: name → [entry](#{name})"
        elif nested:
            kind = f"mapping: [keys](#{name})"
        cells = [f"`{name}`", kind, _default(node, name in required, None)]
        cells.append(_text(node.get("description", "")))
        lines.append("| " + " | ".join(map(_cell, cells)) + " |")
        if nested:
            sections.append(name)
    for name in sections:
        node = top[name]
        entry = node["additionalProperties"] if name in PER_ENTRY else node
        prefix = f"{name}.<name>" if name in PER_ENTRY else name
        lines += ["", f"## {name}", ""]
        if node.get("description"):
            lines += [_sentence(node["description"]), ""]
        lines += _table(entry, prefix)
    lines += [
        "",
        "## Checked by jobs",
        "",
        "Every other setting a job could fail on stops the workflow when it starts, before any",
        "job runs or deletes an old output. These depend on the data, or on a file only a job",
        "reads, so the job that reads it stops, naming the setting:",
        "",
        "| key | the job's error says | why a job checks it |",
        "|---|---|---|",
    ]
    for check in JOB_CHECKS:
        cells = [f"`{check.key}`", f"… {check.error} …", check.why]
        lines.append("| " + " | ".join(map(_cell, cells)) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dafusion.workflow.schema_docs", description=__doc__
    )
    parser.add_argument("--schema", default=str(SCHEMA), help="the config schema (YAML)")
    parser.add_argument("--output", "-o", help="write the page here instead of to stdout")
    parser.add_argument("--check", metavar="PAGE", help="exit 1 if PAGE differs from the page")
    args = parser.parse_args(argv)
    page = render(load_schema(args.schema))
    if args.check:
        if Path(args.check).read_text() != page:
            print(f"{args.check} is stale: run `{COMMAND}`", file=sys.stderr)
            return 1
        return 0
    if args.output:
        Path(args.output).write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    sys.exit(main())
