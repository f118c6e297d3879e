"""The sweep file's sections written out for people and editors, from the fields of kdtrain.schema: the JSON
Schema (`kdtrain schema`, docs/sweep.schema.json, read by editors through the yaml-language-server comment atop
the sweep files) and the Markdown reference (`kdtrain schema --markdown`, docs/reference.md). Split from
kdtrain.schema, which defines the sections; these only read them."""

from __future__ import annotations

import dataclasses

from kdtrain.schema import SEARCH_TYPES, SECTIONS, TeacherConfig


def json_schema() -> dict:
    """The sweep file's JSON Schema, from the sections' fields: each key's type, default and docstring, unknown
    keys refused. Editors read it through the yaml-language-server comment atop the sweep files (completion and
    checks as the user types); `kdtrain schema` prints it. Values a registry owns (an arch, a loss) and every
    bound are checked by kdtrain.config.validate when the file loads."""
    from pydantic import TypeAdapter

    defs: dict = {}

    def of(cls) -> dict:
        found = TypeAdapter(cls).json_schema()
        defs.update(found.pop("$defs", {}))
        for key, prop in found.get("properties", {}).items():  # a field inherited from a base keeps its docstring
            prop.setdefault("description", field_doc(cls, key))
        return found

    props = {name: of(cls) for name, cls in SECTIONS.items()}
    props["teachers"] = {
        "type": "array",
        "items": of(TeacherConfig),
        "description": "The teacher pool: each trained on the data (or its own, teachers[].data), "
        "or loaded from weights, ONNX, TorchScript, logits or an MLflow model.",
    }
    entry = {
        "type": "object",
        "required": ["type"],
        "properties": {
            "type": {"enum": list(SEARCH_TYPES)},
            "low": {"type": "number"},
            "high": {"type": "number"},
            "log": {"type": "boolean"},
            "step": {"type": "number"},
            "choices": {"type": "array"},
            "of": {"type": "array", "items": {"type": "string"}},
        },
        "additionalProperties": False,
    }
    props["search"] = {
        "type": "object",
        "additionalProperties": entry,
        "description": "Dotted key -> its range (float, int), its choices (categorical) or the "
        "teachers to choose from (subset: kd.teachers).",
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "kdtrain sweep file",
        "type": "object",
        "additionalProperties": False,
        "properties": props,
        **({"$defs": defs} if defs else {}),
    }


def json_schema_text() -> str:
    """json_schema() as the text of docs/sweep.schema.json (a test keeps that file up to date)."""
    import json

    return json.dumps(json_schema(), indent=1) + "\n"


def field_doc(cls, name: str) -> str:
    """A field's docstring: its own class's, else that of the first base class that documents it (pydantic reads
    attribute docstrings only in the class body that defines the field)."""
    for c in cls.__mro__:
        info = getattr(c, "__pydantic_fields__", {}).get(name)
        if info is not None and info.description:
            return info.description
    return ""


def markdown_reference() -> str:
    """The sweep-file reference of the docs (docs/reference.md): every key of every section with its type, default
    and docstring, from the fields themselves, so that a default is written once (a test keeps the file current)."""
    lines = [
        "# Sweep-file reference",
        "",
        (
            "Every key of a sweep file, by section, as `kdtrain schema` describes it (generated from the fields' "
            "docstrings by `kdtrain schema --markdown > docs/reference.md`; do not edit by hand). Choices a "
            "registry owns (datasets, models, losses, optimizers, schedules, ensembles) are listed in the other "
            "pages and in each command's `--help`."
        ),
        "",
    ]
    sections = {**SECTIONS, "teachers[]": TeacherConfig}
    for name, cls in sections.items():
        lines += [f"## `{name}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else "(required)")
            )
            kind = getattr(f.type, "__name__", None) or str(f.type)
            doc = " ".join(field_doc(cls, f.name).split()).replace("|", "\\|")
            lines.append(f"| `{f.name}` | {kind.replace('|', 'or')} | `{default!r}` | {doc} |")
        lines.append("")
    return "\n".join(lines)
