"""Did distillation pay? Per student width, the best distilled trial against the no-teacher baseline's mean over
its seeds, and the verdict in words: beyond seed noise, within it, unmeasured (one baseline seed), or lost to
training alone. Each function reads a report.StudyData (`d`); this module imports nothing of the report, which
imports it."""

from __future__ import annotations

import numpy as np
import pandas as pd

GAIN_COLUMNS = [
    "student.width",
    "trial",
    "val_accuracy",
    "test_accuracy",
    "baseline_test_accuracy",
    "baseline_test_accuracy_std",
    "kd_gain",
    "kd_gain_test",
    "kd_gain_sigma",
    "beyond_noise",
    "lost_beyond_noise",
]
NOISE = 2.0  # a gain counts as beyond seed noise when it exceeds NOISE times the baseline's seed spread (on test)


def gain_per_width(d) -> pd.DataFrame:
    """Per student width, the best distilled trial (chosen on val) against the no-teacher baseline's mean over
    its seeds: gains in points on val and test, the val gain in units of the baseline's seed spread, and
    whether the test gain is beyond noise (> NOISE x the baseline's test spread, and positive) or lost beyond it
    (negative and as large). With one baseline seed there is no spread: neither."""
    s = d.students
    if s.empty or "kd_gain_test" not in s:  # studies from before seeded baselines: no spread to compare with
        return pd.DataFrame(columns=GAIN_COLUMNS)
    best = s.loc[s.groupby("student.width")["val_accuracy"].idxmax()].sort_values("student.width").copy()
    for c in ("kd_gain", "kd_gain_test"):
        best[c] = 100 * best[c]  # points
    won, lost = _past(best["kd_gain_test"], NOISE * 100 * best["baseline_test_accuracy_std"])
    measured = baseline_seeds(d) > 1
    best["beyond_noise"], best["lost_beyond_noise"] = won & measured, lost & measured
    best["pending"] = best["kd_gain_test"].isna()  # its follow-up (study.follow_up: after) not done yet
    best["confirmed_seeds"], best["gain_std"] = 0, np.nan
    c = d.confirmed
    hit = best["trial"].astype(int).isin(c.index)
    if hit.any():  # a confirmed trial: its paired gain over the new seeds, judged against its own spread
        rows = c.loc[best.loc[hit, "trial"].astype(int)]
        best.loc[hit, "kd_gain_test"] = rows["gain"].to_numpy()
        best.loc[hit, "gain_std"] = rows["gain_std"].to_numpy()
        best.loc[hit, "confirmed_seeds"] = rows["seeds"].to_numpy()
        best.loc[hit, "test_accuracy"] = rows["test"].to_numpy()
        won, lost = _past(rows["gain"], NOISE * rows["gain_std"])
        best.loc[hit, "beyond_noise"], best.loc[hit, "lost_beyond_noise"] = won.to_numpy(), lost.to_numpy()
    return best[[*GAIN_COLUMNS, "confirmed_seeds", "gain_std", "pending"]].reset_index(drop=True)


def _past(gain: pd.Series, noise: pd.Series) -> tuple[pd.Series, pd.Series]:
    """(won, lost): a gain above the noise and positive; a gain below minus the noise and negative."""
    return (gain > 0) & (gain > noise), (gain < 0) & (-gain > noise)


def gain_verdict(d) -> str:
    """In words: did distillation beat training alone beyond seed noise, where, by how much on test? A trial that
    kdtrain confirm retrained is judged by its paired gain over the new seeds, and not asked to be confirmed again."""
    g = gain_per_width(d)
    if g.empty:
        return ""
    waiting = g[g["pending"]]
    g = g[~g["pending"]]
    if not waiting.empty:
        later = (
            f" Width{'s' if len(waiting) > 1 else ''} {', '.join(str(int(w)) for w in waiting['student.width'])} "
            f"still wait{'' if len(waiting) > 1 else 's'} for {'their' if len(waiting) > 1 else 'its'} "
            "no-teacher baseline: the sweep stopped before its follow-up; the same kdtrain sweep command "
            "finishes it."
        )
        return (gain_verdict_of(d, g) + later).strip() if not g.empty else later.strip()
    return gain_verdict_of(d, g)


def baseline_seeds(d) -> int:
    """How many seeds the study's no-teacher baselines were trained with (study.baseline_seeds)."""
    return int(d.baselines["seeds"].astype(str).str.split(",").str.len().max()) if "seeds" in d.baselines else 1


def gain_verdict_of(d, g: pd.DataFrame) -> str:
    """gain_verdict over the widths whose baselines are in (gain_per_width's rows), then the widths where
    distillation lost to training alone beyond seed noise, if any."""
    lost = g[g["lost_beyond_noise"].astype(bool)]
    if lost.empty:
        return _won_or_not(d, g)
    many = len(lost) > 1
    return (
        f"{_won_or_not(d, g)} Distillation lost to training alone beyond seed noise at width{'s' if many else ''} "
        f"{', '.join(str(int(w)) for w in lost['student.width'])} (best trial "
        f"{', '.join(f'{x:+.1f}' for x in lost['kd_gain_test'])} points on test): there the no-teacher student is "
        "the better choice, and the front's students of those widths are marked in its gain column."
    )


def _won_or_not(d, g: pd.DataFrame) -> str:
    """Where distillation beat training alone beyond seed noise, or the largest gain and why it does not count.
    With one baseline seed there is no spread to judge a gain against: unmeasured, unless kdtrain confirm
    retrained the trial."""
    seeds = baseline_seeds(d)
    won = g[g["beyond_noise"]]
    if won.empty:
        return _not_won(d, g, seeds)
    top = won.loc[won["kd_gain_test"].idxmax()]
    widths = ", ".join(str(int(w)) for w in won["student.width"])
    ask = (
        ""
        if top["confirmed_seeds"]
        else (
            f" A best-of-many trial flatters itself: retrain it with new seeds before shipping (kdtrain confirm "
            f"{d.name} --trial {int(top['trial'])})."
        )
    )
    return (
        f"Distillation beat training alone beyond seed noise at width{'s' if len(won) > 1 else ''} {widths}: "
        f"best at width {int(top['student.width'])}, trial {int(top['trial'])}, {_how(top, seeds)}.{ask}"
    )


def _how(row, seeds: int) -> str:
    """A best trial's test gain in words: paired over kdtrain confirm's new seeds where it ran, else against the
    baseline's mean over its `seeds` seeds."""
    if row["confirmed_seeds"]:
        return (
            f"{row['kd_gain_test']:+.1f} ± {row['gain_std']:.1f} points on test, paired with the baseline "
            f"of each seed, confirmed over {int(row['confirmed_seeds'])} new seeds"
        )
    return (
        f"{row['kd_gain_test']:+.1f} points on test over the baseline's mean over {seeds} seeds (its spread: "
        f"{100 * row['baseline_test_accuracy_std']:.1f} points)"
    )


def _not_won(d, g: pd.DataFrame, seeds: int) -> str:
    """_won_or_not where no width won beyond seed noise: the largest gain of a best trial and why it does not
    count (within its own spread over confirm's new seeds, one baseline seed, or within the baseline's spread)."""
    top = g.loc[g["kd_gain_test"].idxmax()]
    others = g[(g["confirmed_seeds"] > 0) & (g["trial"] != top["trial"])]
    tail = (
        " Also confirmed: "
        + ", ".join(f"trial {int(r.trial)} {r.kd_gain_test:+.1f} ± {r.gain_std:.1f}" for r in others.itertuples())
        + " points."
        if not others.empty
        else ""
    )
    lead = (
        "Distillation did not beat training alone beyond seed noise at any width: the largest test gain of "
        "a best trial is "
    )
    if top["confirmed_seeds"]:
        return (
            f"{lead}{_how(top, seeds)} (width {int(top['student.width'])}, trial {int(top['trial'])}), within "
            f"{NOISE:g} x its own spread over the new seeds.{tail}"
        )
    if seeds < 2:
        w, t = int(top["student.width"]), int(top["trial"])
        return (
            f"Distillation's gain is unmeasured against seed noise: the baselines have one seed (study."
            f"baseline_seeds: 1), so no spread. The largest test gain of a best trial is {top['kd_gain_test']:+.1f}"
            f" points (width {w}, trial {t}); to judge it, give study.baseline_seeds: 3 or retrain it with "
            f"new seeds (kdtrain confirm {d.name} --trial {t}).{tail}"
        )
    spread = 100 * top["baseline_test_accuracy_std"]
    return (
        f"{lead}{top['kd_gain_test']:+.1f} points (width {int(top['student.width'])}), within {NOISE:g} x "
        f"the baseline's spread over {seeds} seeds ({spread:.1f} points).{tail}"
    )
