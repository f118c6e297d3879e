"""Defects found by a review of the whole package (issue 22), each with a test that failed on the code before its
fix (the note of the change says what each saw)."""

import numpy as np
import pytest

from kdtrain import config, data, sources
from kdtrain.cli import main
from kdtrain.config import DataConfig, data_root
from kdtrain.tracking import Tracker, literal


# --------------------------------------------------------------------------- 10: durations


def test_a_bare_number_after_a_unit_is_refused_not_read_as_seconds():
    with pytest.raises(ValueError, match=r"'1h30' \(a number after a unit needs its own unit: write 1h30m or 1h30s"):
        config.parse_duration("1h30")  # was 3630 s: the 30 read as seconds
    assert config.parse_duration("1h30m") == 5400 and config.parse_duration("90") == 90


# --------------------------------------------------------------------------- 7: cache-write races


def test_the_mnist1d_cache_is_written_through_a_temporary_file_of_its_own():
    """Two workers on a cold data root used to write the same fixed temporary name; another writer's file there
    (here a folder, which no write can replace) broke this one's write."""
    cfg = DataConfig(name="mnist1d", size=200, seed=5)
    folder = data_root(cfg) / "mnist1d"
    (folder / "mnist1d_n200_seed5.tmp.npz").mkdir(parents=True)  # the name every worker shared
    d = data.load(cfg)
    assert len(d.y_train) + len(d.y_val) == 160
    assert sorted(p.name for p in folder.iterdir()) == ["mnist1d_n200_seed5.npz", "mnist1d_n200_seed5.tmp.npz"]


def test_the_folder_cache_is_written_through_a_temporary_file_of_its_own(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / "imgs" / c).mkdir(parents=True)
        for i in range(6):
            Image.new("L", (8, 8), color=40 * i).save(tmp_path / "imgs" / c / f"{i}.png")
    cfg = DataConfig(name="folder", path=str(tmp_path / "imgs"), image_size=8)
    cache = data_root(cfg) / "folders" / f"{sources.folder_key(cfg)}.pt"
    (cache.parent / f".{cache.name}.tmp").mkdir(parents=True)  # the name every worker shared
    assert len(data.load(cfg).y_test) == 2 and cache.is_file()


# --------------------------------------------------------------------------- 3: quotes in study names


def test_a_quote_in_a_values_of_an_mlflow_search_is_quoted_safely():
    assert literal("plain") == "'plain'" and literal("bob's-sweep") == '"bob\'s-sweep"'
    with pytest.raises(Exception, match="both kinds of quote"):
        literal("""a'b"c""")


def test_a_sweep_named_with_a_quote_finishes_and_logs_every_run(tiny_sweep, tmp_path):
    """MLflow raised "Invalid clause(s)" on the first lookup by study name, after the teachers had trained."""
    text = tiny_sweep.read_text().replace("study: {name: tiny}", "study: {name: \"bob's-sweep\", trials: 2}")
    tiny_sweep.write_text(text + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n")
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 0
    runs, _ = Tracker(f"sqlite:///{tmp_path}/home/mlflow.db").runs_frame("bob's-sweep")
    roles = runs["tag:kdtrain.role"].value_counts().to_dict()
    assert roles["student"] == 2 and roles["teacher"] == 2 and roles["sweep"] == 1
    assert set(runs["status"]) == {"FINISHED"}


def test_a_study_name_with_both_quotes_is_refused_up_front(tiny_sweep, capsys):
    tiny_sweep.write_text(tiny_sweep.read_text().replace("study: {name: tiny}", """study: {name: 'a"b''c'}""")
                          + "search:\n  kd.alpha: {type: float, low: 0, high: 1}\n")
    assert main(["sweep", str(tiny_sweep), "--no-report"]) == 2
    assert "must not hold both ' and \"" in capsys.readouterr().err
