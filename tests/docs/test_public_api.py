"""kdtrain's public API (issue 30 item 2): the names at the package's top level, resolved from one table
(kdtrain.PUBLIC_API) on first use. Every name resolves and says what it is, the table, __all__, the static imports and
the API reference name the same set, `import kdtrain` stays light, every Python example in the docs that uses kdtrain
runs as written, and a script written against `kdtrain.config` before the public API still runs."""

import ast
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import run_cli

import kdtrain

ROOT = Path(__file__).resolve().parents[2]
HOOKS = {"ModelFactory", "DataFactory"}
"""Defined in kdtrain/__init__.py itself: the contracts of the python: hooks, not names that live elsewhere."""


def _written_doc(obj) -> str:
    doc = (obj.__doc__ or "").strip()
    return "" if doc.startswith(f"{getattr(obj, '__name__', '')}(") else doc  # a dataclass's generated one


def test_every_public_name_resolves_and_says_what_it_is():
    undocumented = set()
    for name in kdtrain.__all__:
        obj = getattr(kdtrain, name)
        assert obj is not None, name
        if not _written_doc(obj):
            undocumented.add(name)
    assert undocumented == set(), "every public name says what it is in a docstring of its own"


def test_the_table_all_and_dir_name_the_same_names():
    assert len(kdtrain.__all__) == len(set(kdtrain.__all__))
    assert set(kdtrain.__all__) == set(kdtrain.PUBLIC_API) | HOOKS
    assert set(kdtrain.__all__) <= set(dir(kdtrain))
    for name, target in kdtrain.PUBLIC_API.items():
        module, attribute = target.split(":")
        assert getattr(kdtrain, name) is getattr(__import__(module, fromlist=[attribute]), attribute), name
    with pytest.raises(AttributeError, match="no attribute 'Tracker'"):
        kdtrain.Tracker  # noqa: B018 - reading it is the test


def test_the_static_imports_match_the_table():
    """Type checkers, IDEs and mkdocstrings read the TYPE_CHECKING imports; the runtime reads PUBLIC_API."""
    tree = ast.parse((ROOT / "kdtrain" / "__init__.py").read_text())
    (block,) = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "TYPE_CHECKING"]
    static = {
        a.asname or a.name: f"{n.module}:{a.name}" for n in block.body if isinstance(n, ast.ImportFrom) for a in n.names
    }
    assert static == kdtrain.PUBLIC_API


def test_the_api_reference_documents_every_public_name():
    shown = re.findall(r"^::: kdtrain\.(\w+)$", (ROOT / "docs" / "api.md").read_text(), re.M)
    assert sorted(shown) == sorted(kdtrain.__all__)


def _env(home: Path) -> dict:
    """A fresh HOME, kdtrain home and data root under home (and no tracking server from the caller)."""
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return {**inherited, "HOME": str(home), "KDTRAIN_HOME": str(home / "store"), "KDTRAIN_DATA": str(home / "data")}


def _run(code: str, home: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run code as a script from the repository root, as a reader would paste it."""
    script = home / "snippet.py"
    script.write_text(code)
    cmd = [sys.executable, str(script)]
    return subprocess.run(cmd, cwd=ROOT, env=_env(home), capture_output=True, text=True, timeout=timeout)


def test_import_kdtrain_imports_no_torch_mlflow_or_optuna(tmp_path):
    r = _run(
        "import sys\nimport kdtrain\ncfg = kdtrain.load('sweeps/quickstart.yaml')\nkdtrain.DataConfig\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'mlflow', 'optuna') if m in sys.modules))\n",
        tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_a_script_written_against_kdtrain_config_still_runs(tmp_path):
    script = textwrap.dedent(
        """
        import sys

        from kdtrain.config import Config, ConfigError, DataConfig, allowed_values, from_dict, load, replace

        cfg = load("sweeps/quickstart.yaml", ["train.epochs=3"])
        assert isinstance(cfg, Config) and isinstance(cfg.data, DataConfig) and cfg.train.epochs == 3
        assert replace(cfg, {"kd.alpha": 0.3}).kd.alpha == 0.3
        assert "dkd" in allowed_values()["kd.loss"]
        try:
            from_dict({"kd": {"temprature": 4}})
        except ConfigError as e:
            assert any("did you mean temperature" in p for p in e.problems), e.problems
        else:
            raise AssertionError("no ConfigError")
        assert "torch" not in sys.modules
        print("ok")
        """
    )
    r = _run(script, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "ok"


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _snippets() -> list:
    """(page:line, code) for every fenced Python block of the README and the docs that mentions kdtrain."""
    out = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = page.read_text()
        for m in PYTHON_BLOCK.finditer(text):
            if "kdtrain" in m.group(1):
                out.append(pytest.param(m.group(1), id=f"{page.name}:{text[: m.start()].count(chr(10)) + 1}"))
    return out


STUDY = """
study: {name: tiny, objectives: {val_accuracy: maximize, params: minimize}, trials: 2, baseline_seeds: 1,
        pruner: none, spread: false}
data: {name: synthetic, size: 400, val_fraction: 0.2, seed: 1}
teachers: [{name: big, arch: mlp, width: 64, epochs: 8}]
student: {arch: mlp, width: 8}
train: {epochs: 4, batch_size: 64, lr: 0.01, threads: 1}
kd: {temperature: 4.0, alpha: 0.7, teachers: [big]}
search: {kd.alpha: {type: float, low: 0, high: 1}}
"""
"""A two-trial study on synthetic data (a few seconds of training) for the examples that read a finished study."""


def test_the_docs_have_python_examples():
    ids = [p.id for p in _snippets()]
    assert len(ids) >= 5 and any(i.startswith("python.md") for i in ids), ids


@pytest.mark.parametrize("code", _snippets())
def test_every_python_example_in_the_docs_runs(code, tmp_path):
    """Each example as a reader would paste it: from the repository root, offline, in a fresh kdtrain home."""
    if "load_study(" in code:  # the example reads a finished study of this name: make one, small, first
        name = re.search(r"load_study\(\"([^\"]+)\"", code).group(1)
        sweep = tmp_path / "study.yaml"
        sweep.write_text(STUDY)
        env = _env(tmp_path)
        made = run_cli("sweep", sweep, "--study", name, "--workers", "1", "--no-report", env=env)  # cwd: tmp_path
        assert made.returncode == 0, made.stdout + made.stderr
    r = _run(code, tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
