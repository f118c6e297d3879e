"""The sweep file's JSON Schema (issue 23): `kdtrain schema` prints it from the sections' fields, the committed
docs/sweep.schema.json is that output, every sweep file shipped validates against it and names it for editors,
and a misspelt key is refused by it as by kdtrain."""

import json

import jsonschema
import yaml
from support import ROOT, run_cli

SWEEPS = sorted((ROOT / "sweeps").rglob("*.yaml"))


def test_kdtrain_schema_prints_the_committed_schema_file():
    r = run_cli("schema")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "docs" / "sweep.schema.json").read_text(), (
        "regenerate: kdtrain schema > docs/sweep.schema.json"
    )
    schema = json.loads(r.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    # the field docstrings are the reference: a default is written once, in the field
    temperature = schema["properties"]["kd"]["properties"]["temperature"]
    assert temperature["default"] == 4.0 and "temperature" in temperature["description"].lower()
    assert schema["properties"]["study"]["properties"]["storage_patience"]["default"] == "10m"


def test_every_shipped_sweep_file_validates_and_points_editors_at_the_schema():
    validator = jsonschema.Draft202012Validator(json.loads((ROOT / "docs" / "sweep.schema.json").read_text()))
    assert len(SWEEPS) >= 10
    for path in SWEEPS:
        first = path.read_text().splitlines()[0]
        target = (path.parent / first.split("$schema=", 1)[-1]).resolve()
        assert first.startswith("# yaml-language-server: $schema=") and target == ROOT / "docs" / "sweep.schema.json", (
            path
        )
        problems = [e.message for e in validator.iter_errors(yaml.safe_load(path.read_text()))]
        assert problems == [], (path.name, problems)


def test_a_misspelt_key_is_refused_by_the_schema():
    validator = jsonschema.Draft202012Validator(json.loads((ROOT / "docs" / "sweep.schema.json").read_text()))
    raw = yaml.safe_load((ROOT / "sweeps" / "quickstart.yaml").read_text())
    raw["kd"]["temprature"] = 4.0
    raw["search"]["kd.alpha"]["hihg"] = 1
    messages = sorted(e.message for e in validator.iter_errors(raw))
    assert any("'temprature' was unexpected" in m for m in messages), messages
    assert any("'hihg' was unexpected" in m for m in messages), messages


def test_the_docs_reference_is_generated_from_the_fields():
    """docs/reference.md is `kdtrain schema --markdown`: each key's default and meaning come from the field."""
    r = run_cli("schema", "--markdown")
    assert r.returncode == 0, r.stderr
    assert r.stdout == (ROOT / "docs" / "reference.md").read_text(), (
        "regenerate: kdtrain schema --markdown > docs/reference.md"
    )
    assert "| `storage_patience` | str or int or float | `'10m'` |" in r.stdout


def test_every_key_has_a_meaning_in_the_reference_and_the_schema():
    """A field inherited from a base class (student.*, teachers[].depth, kd.loss, ...) keeps its docstring."""
    from kdtrain.schema_docs import json_schema, markdown_reference

    rows = [ln for ln in markdown_reference().splitlines() if ln.startswith("| `")]
    empty = [ln.split("|")[1].strip() for ln in rows if ln.rstrip().endswith("|  |")]  # an empty last cell
    assert len(rows) > 80 and empty == [], f"keys without a meaning: {empty}"
    schema = json_schema()
    sections = {**schema["properties"], "teachers[]": schema["properties"]["teachers"]["items"]}
    missing = [
        f"{name}.{key}"
        for name, sec in sections.items()
        for key, prop in sec.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert missing == [], missing
