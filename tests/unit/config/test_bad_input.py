"""Bad input, one test each: a non-zero exit code, one clear message, no traceback, and no study, run or file.

Each case runs the real `kdtrain sweep` entry point (in-process: main() is what the console script calls) in
an empty directory whose kdtrain home and data root are fresh, and compares every file before and after.
The wrong-password case needs a real PostgreSQL and lives in integration/postgres/test_postgres_workers.py.
"""

import textwrap
from pathlib import Path

import optuna
import pytest
import sqlalchemy
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import SEARCH, TINY_SWEEP, refused, snapshot, sweep_file

from kdtrain.cli.commands import main
from kdtrain.distill import models
from kdtrain.study import search


def test_malformed_yaml(tmp_path, capsys):
    p = sweep_file(tmp_path, "study: {name: x\ndata: [1, 2\n")
    refused(tmp_path, capsys, [p], 2, ["not valid YAML", "line"])


def test_unknown_key(tmp_path, capsys):
    p = sweep_file(
        tmp_path,
        textwrap.dedent(TINY_SWEEP).replace("student: {arch: mlp, width: 8}", "student: {arch: mlp, widht: 8}")
        + SEARCH,
    )
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
    refused(
        tmp_path,
        capsys,
        [sweep_file(tmp_path), "--storage", url],
        1,
        ["cannot open the Optuna storage", "127.0.0.1", "kdtrain:***@", "Connection refused"],
        secret="Unreach-Pw-77",
    )


def test_unreachable_tracking_server(tmp_path, capsys):
    refused(
        tmp_path,
        capsys,
        [sweep_file(tmp_path), "--tracking-uri", "http://127.0.0.1:1"],
        1,
        ["cannot reach the MLflow tracking server http://127.0.0.1:1"],
    )


def test_corrupt_teacher_checkpoint(tmp_path, capsys):
    ckpt = tmp_path / "big.pt"
    ckpt.write_bytes(b"\x80\x04not a checkpoint" * 10)
    # conv has no weights and would train first if the checkpoint were read late: nothing may be trained
    refused(
        tmp_path,
        capsys,
        [sweep_file(tmp_path), "--set", f"teachers.big.weights={ckpt}"],
        1,
        ["teacher checkpoint", str(ckpt), "not a readable PyTorch state dict"],
    )


def test_checkpoint_that_does_not_fit_the_arch(tmp_path, capsys):
    ckpt = tmp_path / "big.pt"
    torch.save(models.create_model("mlp", (1, 16), 4, width=32).state_dict(), ckpt)  # the file says width 64
    refused(
        tmp_path,
        capsys,
        [sweep_file(tmp_path), "--set", f"teachers.big.weights={ckpt}"],
        1,
        ["teacher 'big'", "do not fit arch mlp at width 64", "size mismatch"],
    )


def test_torchvision_dataset_missing_offline(tmp_path, capsys):
    refused(
        tmp_path,
        capsys,
        [sweep_file(tmp_path), "--set", "data.name=mnist", "--set", f"data.root={tmp_path / 'data' / 'none'}"],
        1,
        [str(tmp_path / "data" / "none"), "data.download=true"],
    )


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


# --------------------------------------------------------------------------- flags (found by fuzzing the CLI)


@pytest.mark.parametrize(
    "args, says",
    [
        (["--trials", "abc"], "argument --trials: invalid int value"),  # argparse's own 'kdtrain sweep: error:' before
        (["--workers", "1e3"], "argument --workers: expected auto or a number of workers"),
        (["--study", ""], "argument --study: must not be empty"),  # was: silently the sweep file's study
        (["--storage", ""], "argument --storage: must not be empty"),  # was: silently the default journal
        (["--tracking-uri", ""], "argument --tracking-uri: must not be empty"),
        (
            ["--storage", "j\x00"],
            "control characters",
        ),  # was: ValueError (embedded null byte) after the teachers trained
        (["--tracking-uri", "http://127.0.0.1:1/\n"], "control characters"),  # was: http.client.InvalidURL
        (["--study", "a/b"], "one folder name"),  # study.name refuses '/', --study took it
        (["--study", ".."], "one folder name"),  # the study's artifacts went to the folder above
        (["--study", "x" * 300], "at most 255 bytes"),  # was: OSError (file name too long) creating the artifact folder
        (["--study", "x" * 5000], "at most 255 bytes"),  # was: MlflowException (name longer than 500)
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_flag_is_one_error_line_exit_2(tmp_path, capsys, args, says):
    refused(tmp_path, capsys, [sweep_file(tmp_path), *args], 2, ["(see kdtrain sweep --help)", says])


def test_empty_timeout_is_refused_not_ignored(tmp_path, capsys):
    """--timeout "" (an unset variable) ran with no time limit at all."""
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--timeout", ""], 1, ["--timeout: not a duration: ''"])


@pytest.mark.parametrize(
    "name, says",
    [("..", "one folder name"), ("x" * 300, "at most 255 bytes"), ("'a\tb'", "control characters")],
    ids=["dots", "long", "tab"],
)
def test_study_name_that_cannot_be_a_folder(tmp_path, capsys, name, says):
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--set", f"study.name={name}"], 2, ["study.name: ", says])


def storage_cases(tmp_path: Path) -> list[tuple[str, str]]:
    """--storage values that cannot be an Optuna storage, with what the message says."""
    (tmp_path / "binary.journal").write_bytes(b"\xff\xfe\x00garbage\n{nope\n")
    (tmp_path / "valid.json").write_text("[1, 2]\n")
    (tmp_path / "plain").write_text("x")
    return [
        (str(tmp_path / "sweep.yaml"), "is not an Optuna journal (JSONDecodeError"),  # was: JSONDecodeError
        (str(tmp_path / "binary.journal"), "is not an Optuna journal (UnicodeDecodeError"),  # was: UnicodeDecodeError
        (str(tmp_path / "valid.json"), "is not an Optuna journal"),
        ("/dev/null", "is not a regular file"),  # was: OSError (EINVAL, fsync) after the teachers trained
        ("~no-such-user-kdtrain/optuna.journal", "Could not determine home directory"),  # was: RuntimeError
        ("x" * 300, "File name too long"),  # was: OSError after the teachers trained
        (str(tmp_path / "plain" / "optuna.journal"), "is not a folder"),  # was: NotADirectoryError after training
        ("sqlite://", "in-memory database"),  # was: the study vanished when the sweep ended
        ("sqlite:///", "in-memory database"),
    ]


def test_storage_that_cannot_be_a_journal(tmp_path, capsys):
    p = sweep_file(tmp_path)
    for storage, says in storage_cases(tmp_path):
        refused(tmp_path, capsys, [p, "--storage", storage], 1, ["kdtrain: error: ", says])


@pytest.mark.parametrize(
    "command",
    [
        ("status",),
        ("report",),
        ("worker", "--study", "tiny"),
        ("export", "--study", "tiny", "--pareto"),
        ("confirm", "tiny", "--pareto"),
    ],
    ids=lambda c: c[0],
)
def test_every_command_refuses_a_broken_journal(tmp_path, capsys, command):
    """A file that is not a journal ended in a traceback (UnicodeDecodeError, JSONDecodeError) in every command."""
    if command[0] == "export":  # export first checks that its exporters are installed
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    sweep_file(tmp_path)
    for storage, says in storage_cases(tmp_path)[:4]:
        refused(tmp_path, capsys, ["--storage", storage], 1, [says], command=command)


@pytest.mark.parametrize(
    "uri, says",
    [
        ("http://[::1", "is not a valid URI (Invalid IPv6 URL)"),  # was: ValueError from urlsplit
        ("http://127.0.0.1:99999", "Port out of range"),
        ("http://a b", "contains a space"),  # was: http.client.InvalidURL
        ("ftp://x", "unknown scheme 'ftp'"),  # was: MLflow's error after the teachers trained
        ("sqlite://", "in-memory database"),  # was: a sweep whose runs vanished
        ("sqlite:///{tmp}", "names a folder"),  # was: minutes of MLflow retries
        ("sqlite:///{tmp}/sweep.yaml", "is not a SQLite database"),  # was: refused after the teachers trained
        ("{tmp}/sweep.yaml", "a local MLflow store is a folder"),
        ("x" * 300 + "/y", "File name too long"),
        (
            "postgresql://kd:Pw-123@127.0.0.1:1/db",
            "cannot reach the MLflow tracking database",
        ),  # was: minutes of retries
    ],
    ids=lambda v: repr(v)[:30],
)
def test_tracking_uri_that_mlflow_would_trip_on_later(tmp_path, capsys, uri, says):
    if uri.startswith("postgresql"):
        try:
            sqlalchemy.create_engine(uri)
        except ImportError:
            pytest.skip("no PostgreSQL driver")
    uri = uri.replace("{tmp}", str(tmp_path))
    refused(tmp_path, capsys, [sweep_file(tmp_path), "--tracking-uri", uri], 1, [says], secret="Pw-123")


def test_profile_width_too_large_to_build(tmp_path, capsys):
    """--widths 10**23 ended in torch's TypeError (overflow) after the teachers' measurements were cached."""
    refused(
        tmp_path,
        capsys,
        [sweep_file(tmp_path), "--widths", "8,99999999999999999999999"],
        1,
        ["student mlp at width 99999999999999999999999: the model cannot be built"],
        command=("profile",),
    )


NASTY = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "\n",
        "/",
        "..",
        "~",
        "~nobody-kdtrain/x",
        "x" * 300,
        "é",
        "://",
        "sqlite://",
        "http://[",
        ":99999",
        "%00",
        "file:",
        "-1",
        "0",
        "nan",
        "8h",
        "1e400",
        "@",
        "?",
        "#",
    ]
)
flag_values = st.lists(NASTY | st.text(max_size=6), min_size=1, max_size=4).map("".join)


@settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    flags=st.dictionaries(
        st.sampled_from(["--study", "--storage", "--tracking-uri", "--timeout", "--trials", "--workers"]),
        flag_values,
        min_size=1,
        max_size=3,
    )
)
def test_any_flag_values_end_in_one_error_line(tmp_path, capsys, flags):
    """Whatever the flags hold: one error line, no traceback, nothing written. A broken journal stands behind
    every flag that passes its check, so that no example starts work."""
    broken = tmp_path / "broken.journal"
    broken.write_bytes(b"not a journal\n")
    flags = {"--storage": str(broken), **flags} if "--storage" not in flags else flags
    if "://" in flags["--storage"] and not flags["--storage"].startswith("sqlite://"):
        flags["--storage"] = str(broken)  # an RDB URL would connect (and sqlite:///x create a file)
    args = [sweep_file(tmp_path), *[x for kv in flags.items() for x in kv]]
    if "--tracking-uri" not in flags:
        args += ["--tracking-uri", "http://127.0.0.1:1"]  # refused last, should the storage pass
    refused(tmp_path, capsys, args)
