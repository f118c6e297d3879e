"""What a new user's mistakes get: one line that says what is wrong and how to fix it, exit code 2 for bad input,
no traceback (issue 33, item 11)."""

import textwrap

from support import TINY_SEARCH, run_cli, write_sweep


def test_an_empty_sweep_file_says_it_is_empty_and_where_to_start(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing yet\n")
    r = run_cli("sweep", p)
    assert r.returncode == 2 and "the file is empty" in r.stderr and "sweeps/quickstart.yaml" in r.stderr, r.stderr
    assert "kd.alpha" not in r.stderr and "Traceback" not in r.stderr


def test_a_misspelt_search_key_gets_a_suggestion(tmp_path):
    p = write_sweep(tmp_path, TINY_SEARCH.replace("kd.temperature:", "kd.temprature:"))
    r = run_cli("sweep", p)
    assert r.returncode == 2
    assert "search.kd.temprature: not a setting of the sweep file; did you mean kd.temperature?" in r.stderr, r.stderr


def test_a_python_reference_that_cannot_be_imported_is_bad_input(tmp_path):
    (tmp_path / "broken_models.py").write_text("raise RuntimeError('half-written file')\n")
    p = write_sweep(
        tmp_path,
        textwrap.dedent("""
        search:
          kd.alpha: {type: float, low: 0.1, high: 1}
        """),
        **{"student: {arch: mlp, width: 8}": "student: {arch: 'python:broken_models:net', width: 8}"},
    )
    r = run_cli("sweep", p, env={"KDTRAIN_HOME": str(tmp_path / "home")})
    assert r.returncode == 2, r.stdout + r.stderr
    assert (
        "importing 'broken_models' raised RuntimeError: half-written file" in r.stderr and "Traceback" not in r.stderr
    )


def test_names_that_would_break_subsets_or_paths_are_refused_up_front(tmp_path):
    p = write_sweep(
        tmp_path,
        **{
            "name: big,": "name: 'mlp+big',",
            "teachers: [big]": "teachers: ['mlp+big']",
            "of: [big, conv]": "of: ['mlp+big', conv]",
        },
    )
    r = run_cli("sweep", p)
    assert r.returncode == 2 and "teachers[0] (mlp+big).name: letters, digits" in r.stderr, r.stderr
    for bad in ("../x", "..", "a/b"):
        q = write_sweep(tmp_path, **{"name: conv,": f"name: '{bad}',", "of: [big, conv]": f"of: [big, '{bad}']"})
        r = run_cli("sweep", q)
        assert r.returncode == 2 and f"({bad}).name: letters, digits" in r.stderr, (bad, r.stderr)
    q = write_sweep(tmp_path, **{"study: {name: tiny, ": "study: {name: '..', "})
    r = run_cli("sweep", q)
    assert r.returncode == 2 and "study.name: must be one folder name (not empty, no '/', not . or ..)" in r.stderr, (
        r.stderr
    )


def test_an_example_run_before_its_data_is_made_says_how_to_make_it(tmp_path, monkeypatch):
    """Issue 33 item 11: folder.yaml before make_data.py said only 'no such folder'; the sweep file's own comments
    name the command that makes the data, and relative paths are read from the current folder."""
    from pathlib import Path

    import pytest

    from kdtrain.config import sweepfile
    from kdtrain.errors import ConfigError

    examples = Path(__file__).resolve().parents[3] / "sweeps" / "examples"
    monkeypatch.chdir(tmp_path)  # no data/ here
    for name in ("folder.yaml", "csv.yaml"):
        with pytest.raises(ConfigError) as e:
            sweepfile.load(examples / name)
        (line,) = [p for p in e.value.problems if p.startswith("data.path: no such")]
        assert "the sweep file makes its data with: python sweeps/examples/make_data.py data" in line, line
        assert f"relative paths are read from the current folder ({tmp_path})" in line, line
    (tmp_path / "mine.yaml").write_text("data: {name: folder, path: nowhere}\n")
    with pytest.raises(ConfigError) as e:  # no comment to quote: where relative paths are read from, no more
        sweepfile.load(tmp_path / "mine.yaml")
    (line,) = [p for p in e.value.problems if p.startswith("data.path: no such")]
    assert "current folder" in line and "makes its data" not in line


def test_on_a_terminal_the_sweep_says_what_it_waits_for_beside_its_bar(tmp_path):
    """Issue 33 item 10: on a terminal the sweep went silent while it opened its stores and logged its teachers,
    and the baselines it trained never showed (only the bar did). Run under a real pseudo-terminal."""
    import os
    import pty
    import subprocess
    import sys

    p = write_sweep(tmp_path, **{"trials: 3": "trials: 2"})
    master, slave = pty.openpty()
    env = {
        **{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
        "KDTRAIN_HOME": str(tmp_path / "home"),
        "KDTRAIN_DATA": str(tmp_path / "data"),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "kdtrain.cli", "sweep", str(p), "--no-report"],
        stdout=slave,
        stderr=slave,
        stdin=subprocess.DEVNULL,
        env=env,
        cwd=tmp_path,
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the terminal closed: the sweep ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(master)
    assert proc.wait(timeout=300) == 0
    out = b"".join(chunks).decode(errors="replace")
    assert "opening the study's stores" in out, out
    assert "training without a teacher" in out, out  # the follow-up's baselines, above the bar
    assert "study tiny" in out and "trial 0 complete:" not in out, out  # the trials' results are the bar's


def test_a_misspelt_key_or_model_gets_a_suggestion(tmp_path, capsys):
    from kdtrain.cli.commands import main

    (tmp_path / "s.yaml").write_text(
        "data: {name: synthetic, size: 200}\nstudent: {arch: mlp}\nkd: {temprature: 3.0, alpha: 0}\n"
    )
    assert main(["train", str(tmp_path / "s.yaml")]) == 2
    assert "kd.temprature: unknown key; did you mean temperature?" in capsys.readouterr().err
    (tmp_path / "s.yaml").write_text("data: {name: synthetic, size: 200}\nstudent: {arch: 'torchvision:resnet181'}\n")
    assert main(["train", str(tmp_path / "s.yaml")]) == 2
    assert "torchvision has no classification model 'resnet181'; did you mean resnet18?" in capsys.readouterr().err
    from kdtrain.config import allowed_values

    archs = allowed_values()["student.arch, teachers[].arch"]
    assert any(a.startswith("torchvision:NAME") for a in archs) and "python:package.module:function" in archs
