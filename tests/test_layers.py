"""The package's layers (issue 23): imports point down only. config.py imported the registries to check values
and the registries imported config.py for their sections and errors: eight modules formed one cycle."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "kdtrain"


def import_graph() -> dict[str, set[str]]:
    """kdtrain module -> the kdtrain modules it imports anywhere in its source (inside functions too: a lazy import
    is still a dependency, and a cycle through one is a cycle)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "kdtrain":
                found |= {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kdtrain."):
                found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("kdtrain.")}
        graph[path.stem] = found - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the path around it (depth-first search, one path per cycle's entry)."""
    found, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_the_ground_floor_imports_nothing_of_kdtrain():
    graph = import_graph()
    assert graph["errors"] == set() and graph["paths"] == set() and graph["pareto"] == set()
    assert graph["schema"] <= {"pareto"}
    assert "config" not in set().union(*graph.values())  # the re-exporting module is for users' code only


def test_no_module_over_500_lines_and_no_function_over_60_but_the_training_loop():
    sizes = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 500} == {}
    long = {}
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long[f"{path.name}:{node.name}"] = node.end_lineno - node.lineno + 1
    assert set(long) == {"train.py:train"}, long  # the one loop a reader follows top to bottom


def test_loading_a_sweep_file_leaves_torch_unimported():
    """Validating a sweep file imported torch (through the registries it is checked against): seconds, and the
    CUDA libraries, before a bad key could be reported. The registries name their choices without it now."""
    import subprocess
    import sys

    code = (
        "import sys; from kdtrain import sweepfile; sweepfile.load('sweeps/quickstart.yaml'); "
        "sweepfile.load('sweeps/few_labels.yaml'); print(sorted(m for m in ('torch', 'torchvision', 'mlflow', "
        "'optuna') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"
