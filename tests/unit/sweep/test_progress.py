"""The sweep's progress display: timestamped lines with counts and an ETA when not a terminal, the ETA's rate, and
a study whose progress cannot be read."""

import datetime
import io
import itertools
import time

from support import load_study, write_sweep
from support.progress import progress_lines, seconds
from support.sweep8 import TRIALS

from kdtrain import config
from kdtrain.study import search
from kdtrain.sweep.console import SweepProgress


def test_progress_is_timestamped_lines_with_counts_and_eta_when_not_a_terminal(sweep8):
    home, r, _, _ = sweep8
    lines = progress_lines(r.stdout)
    assert len(lines) >= 2
    stamps = [datetime.datetime.strptime(m["stamp"], "%Y-%m-%d %H:%M:%S") for m in lines]
    done = [int(m["done"]) for m in lines]
    elapsed = [seconds(m["elapsed"]) for m in lines]
    assert stamps == sorted(stamps) and elapsed == sorted(elapsed)
    assert done == sorted(done) and len(set(done)) >= 2 and done[-1] == TRIALS
    for m in lines:
        assert int(m["target"]) == TRIALS and m["failed"] == "0" and int(m["running"]) <= 1  # one worker
        assert int(m["complete"]) + int(m["pruned"]) == int(m["done"])
    states = [m.group(0).split(" ", 2)[2].split("  elapsed")[0] for m in lines[:-1]]
    assert all(a != b for a, b in itertools.pairwise(states))  # a line when something changed (the last: at the end)
    # ETA: '?' until a trial finished since the sweep started (on an empty study), then elapsed / trials
    # finished since the start * trials left
    for m, d, e in zip(lines, done, elapsed, strict=False):
        if d == 0:
            assert m["eta"] == "?"
            continue
        eta, new, left = seconds(m["eta"]), d, TRIALS - d
        assert e * left / new - 1 < eta <= (e + 1) * left / new, m.group(0)
    last = lines[-1]
    assert last["eta"] == "0m00s" and last["running"] == "0" and last["complete"] == str(TRIALS)
    best = max(t.values[0] for t in load_study(home).trials)
    assert last["best"] == f"{best:.4f}"


def test_eta_counts_every_trial_finished_since_the_sweep_started(tmp_path):
    cfg = config.load(write_sweep(tmp_path))
    journal = str(tmp_path / "j.journal")
    study = search.create_or_open(cfg, search.open_storage(journal), "tiny", 12)
    out = io.StringIO()  # not a terminal: timestamped lines
    progress = SweepProgress("tiny", journal, 12, cfg.study.objectives, stream=out)

    def one_trial_finishes():
        time.sleep(1.0)
        study.tell(study.ask(), [0.9, 100.0])

    one_trial_finishes()  # before the display's first tick, as when trials are quicker than 2 s
    progress.update()
    one_trial_finishes()
    progress.update()
    first, second = progress_lines(out.getvalue())
    assert first["done"] == "1" and second["done"] == "2"
    assert first["eta"] != "?"  # one trial finished in this sweep: there is a rate
    elapsed = seconds(second["elapsed"])  # >= 2: two trials took it, ten are left
    assert seconds(second["eta"]) <= 5 * (elapsed + 1), second.group(0)  # elapsed / 2 * 10, not elapsed / 1 * 10


def test_a_study_whose_progress_cannot_be_read_says_so_once(tmp_path, capsys):
    from kdtrain.sweep.console import SweepProgress

    gone = tmp_path / "gone.journal"
    progress = SweepProgress("ghost", str(gone), 3, {"val_accuracy": "maximize"})
    for _ in range(5):
        progress.update()
    err = capsys.readouterr().err
    assert err.count("warning:") == 1 and "progress of study ghost could not be read for 3 updates" in err
