"""Bad input, one test each: a non-zero exit code, one clear message, no traceback, and no study, run or file.

Each case runs the real `kdtrain sweep` entry point (in-process: main() is what the console script calls) in
an empty directory whose kdtrain home and data root are fresh, and compares every file before and after.
The wrong-password case needs a real PostgreSQL and lives in test_integration.py.
"""

import textwrap
from pathlib import Path

import optuna
import pytest
import torch

from kdtrain import models, search
from kdtrain.cli import main

from conftest import TINY_SWEEP

SEARCH = """
search:
  kd.temperature: {type: float, low: 1, high: 20, log: true}
  kd.alpha: {type: float, low: 0, high: 1}
"""


def snapshot(root: Path) -> dict[str, int]:
    """Every file under root (but the dataset cache) with its size."""
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*")
            if p.is_file() and not p.relative_to(root).parts[0] == "data"}


def sweep_file(tmp_path: Path, text: str | None = None, extra: str = SEARCH) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(text if text is not None else textwrap.dedent(TINY_SWEEP) + textwrap.dedent(extra))
    return p


def refused(tmp_path, capsys, args, code=None, says=(), secret=None):
    """Run `kdtrain sweep ARGS`; check the exit code, the one message and that nothing was written."""
    before = snapshot(tmp_path)
    rc = main(["sweep", *map(str, args), "--no-report"])
    out, err = capsys.readouterr()
    assert rc != 0 and (code is None or rc == code), (rc, out, err)
    assert err.count("kdtrain: error:") == 1 and "Traceback" not in err + out, err
    for s in says:
        assert s in err, (s, err)
    if secret:
        assert secret not in out + err
    assert snapshot(tmp_path) == before, "something was written"
    assert not (tmp_path / "home").exists()  # no journal, no MLflow store, no cache, no lock
    return err


def test_malformed_yaml(tmp_path, capsys):
    p = sweep_file(tmp_path, "study: {name: x\ndata: [1, 2\n")
    refused(tmp_path, capsys, [p], 2, ["not valid YAML", "line"])


def test_unknown_key(tmp_path, capsys):
    p = sweep_file(tmp_path, textwrap.dedent(TINY_SWEEP).replace("student: {arch: mlp, width: 8}",
                                                                  "student: {arch: mlp, widht: 8}") + SEARCH)
    refused(tmp_path, capsys, [p], 2, ["student.widht"])


def test_wrong_type(tmp_path, capsys):
    p = sweep_file(tmp_path)
    refused(tmp_path, capsys, [p, "--set", "train.epochs=many"], 2, ["train.epochs", "int"])


def test_alpha_outside_0_1(tmp_path, capsys):
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--set", "kd.alpha=1.5"], 2, ["kd.alpha", "[0, 1]"])


def test_temperature_not_positive(tmp_path, capsys):
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--set", "kd.temperature=0"], 2, ["kd.temperature", "> 0"])


def test_empty_search_space(tmp_path, capsys):
    refused(tmp_path, capsys, [sweep_file(tmp_path, extra="search: {}\n")], 2, ["search space is empty"])


def test_unknown_teacher_in_subset(tmp_path, capsys):
    extra = SEARCH + "  kd.teachers: {type: subset, of: [big, nope]}\n"
    refused(tmp_path, capsys, [sweep_file(tmp_path, extra=extra)], 2, ["search.kd.teachers.of", "'nope'"])


def test_unreachable_storage(tmp_path, capsys):
    url = "postgresql://kdtrain:Unreach-Pw-77@127.0.0.1:1/kdtrain"
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--storage", url], 1,
            ["cannot open the Optuna storage", "127.0.0.1", "kdtrain:***@", "Connection refused"],
            secret="Unreach-Pw-77")


def test_unreachable_tracking_server(tmp_path, capsys):
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--tracking-uri", "http://127.0.0.1:1"], 1,
            ["cannot reach the MLflow tracking server http://127.0.0.1:1"])


def test_corrupt_teacher_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "big.pt"
    ckpt.write_bytes(b"\x80\x04not a checkpoint" * 10)
    # conv has no weights and would train first if the checkpoint were read late: nothing may be trained
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--set", f"teachers.big.weights={ckpt}"], 1,
            ["teacher checkpoint", str(ckpt), "not a readable PyTorch state dict"])


def test_checkpoint_that_does_not_fit_the_arch(tmp_path, capsys):
    ckpt = tmp_path / "big.pt"
    torch.save(models.create_model("mlp", (1, 16), 4, width=32).state_dict(), ckpt)  # the file says width 64
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--set", f"teachers.big.weights={ckpt}"], 1,
            ["teacher 'big'", "do not fit arch mlp at width 64", "size mismatch"])


def test_torchvision_dataset_missing_offline(tmp_path, capsys):
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--set", "data.name=mnist", "--set",
                               f"data.root={tmp_path / 'data' / 'none'}"], 1,
            [str(tmp_path / "data" / "none"), "data.download=true"])


def test_changed_search_space_under_an_existing_study(tmp_path, capsys):
    p = sweep_file(tmp_path)
    assert main(["sweep", str(p), "--workers", "0", "--no-report"]) == 0  # the study exists, nothing ran yet
    capsys.readouterr()
    home = tmp_path / "home"
    journal = search.open_storage(str(home / "optuna.journal"))
    runs_before = len(optuna.load_study(study_name="tiny", storage=journal).trials)

    changed = sweep_file(tmp_path, extra=SEARCH.replace("high: 20", "high: 50"))
    before = snapshot(tmp_path)
    rc = main(["sweep", str(changed), "--no-report"])
    out, err = capsys.readouterr()
    assert rc == 1 and err.count("kdtrain: error:") == 1 and "Traceback" not in out + err
    assert "different search space" in err and "--new-study" in err
    assert snapshot(tmp_path) == before  # not a byte more in the journal or the MLflow store
    summaries = optuna.get_all_study_summaries(search.open_storage(str(home / "optuna.journal")), False)
    assert [s.study_name for s in summaries] == ["tiny"]
    assert len(optuna.load_study(study_name="tiny", storage=journal).trials) == runs_before
