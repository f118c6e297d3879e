"""The package's wings and floors (issues 23 and 30): imports point down only, checked by import-linter's layers
contract in pyproject.toml (the same contract `.ci/run` runs as `lint-imports`), and modules stay small."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from support import ROOT

PACKAGE = ROOT / "kdtrain"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    """import-linter over the kdtrain package found first on the path from `root` (with root's pyproject.toml)."""
    env = {"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(root), "HOME": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_the_wings_keep_their_layers_contract():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_an_import_from_a_wing_above_breaks_the_contract(tmp_path):
    """The contract can fail: a copy of the package where the data wing imports the command line is refused,
    with the offending import named."""
    shutil.copytree(PACKAGE, tmp_path / "kdtrain", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    rows = tmp_path / "kdtrain" / "data" / "rows.py"
    rows.write_text(rows.read_text() + "\n\ndef _upward():\n    from kdtrain.cli import args  # noqa: F401\n")
    r = lint_imports(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "BROKEN" in r.stdout and "kdtrain.data.rows -> kdtrain.cli.args" in r.stdout, r.stdout


def test_every_module_sits_in_a_wing_or_on_the_ground_floor():
    """A module added at the package root is outside every wing's contract unless the contract names it."""
    contract = (ROOT / "pyproject.toml").read_text().split("[tool.importlinter]")[1]
    named = {
        m.strip(' ",').split(".")[1]
        for line in contract.splitlines()
        for m in line.split("|") + line.split(":")
        if m.strip(' ",').startswith("kdtrain.")
    }
    present = {p.stem for p in PACKAGE.glob("*.py")} | {
        p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()
    }
    assert present - {"__init__", "api"} <= named, present - named


def test_no_module_over_500_lines_and_no_function_over_60_but_the_training_loop():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}
    long = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long[f"{path.relative_to(PACKAGE)}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert set(long) == {"distill/train.py:train"}, long  # the one loop a reader follows top to bottom


def test_loading_a_sweep_file_leaves_torch_unimported():
    """Validating a sweep file imported torch (through the registries it is checked against): seconds, and the
    CUDA libraries, before a bad key could be reported. The registries name their choices without it now."""
    code = (
        "import sys; from kdtrain.config import sweepfile; sweepfile.load('sweeps/quickstart.yaml'); "
        "sweepfile.load('sweeps/few_labels.yaml'); print(sorted(m for m in ('torch', 'torchvision', 'mlflow', "
        "'optuna') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = p
    return out


def test_no_private_name_is_imported_across_modules():
    """`from kdtrain.x import _name` and `x._name` on an imported kdtrain module: another module's insides.
    What others use is public and named for them."""
    mods, found = _modules(), []
    for p in mods.values():
        tree, aliases = ast.parse(p.read_text()), {}
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("kdtrain"):
                for a in n.names:
                    if f"{n.module}.{a.name}" in mods:
                        aliases[a.asname or a.name] = f"{n.module}.{a.name}"
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        found.append(f"{p.relative_to(ROOT)}:{n.lineno}: from {n.module} import {a.name}")
        for n in ast.walk(tree):
            if (
                isinstance(n, ast.Attribute)
                and isinstance(n.value, ast.Name)
                and n.value.id in aliases
                and n.attr.startswith("_")
                and not n.attr.startswith("__")
            ):
                found.append(f"{p.relative_to(ROOT)}:{n.lineno}: {n.value.id}.{n.attr}")
    assert found == [], "\n".join(found)


def test_no_kdtrain_class_is_built_from_more_than_six_positional_arguments():
    """Teacher(...) from 16 positional arguments, StudyData from 14: one swapped pair is a silent wrong report."""
    mods = _modules()
    classes = {n.name for p in mods.values() for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.ClassDef)}
    found = []
    for p in mods.values():
        for n in ast.walk(ast.parse(p.read_text())):
            if isinstance(n, ast.Call) and len(n.args) > 6:
                name = ast.unparse(n.func).split(".")[-1]
                if name in classes:
                    found.append(f"{p.relative_to(ROOT)}:{n.lineno}: {name} with {len(n.args)} positional arguments")
    assert found == [], "\n".join(found)
