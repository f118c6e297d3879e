"""MLflow runs + Optuna trials -> pandas -> Pareto plots and an offline HTML / Markdown report.

One study: reports/<study>/ with index.html, plots (PNG and SVG), trials.csv,
pareto.csv and summary.md. Several studies: their fronts overlaid and the best
student per size bucket, in reports/<name>/, beside each study's own report.
"""

from __future__ import annotations

import dataclasses
import html
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kdtrain.pareto import feasible, front_mask
from kdtrain.report import pages, plots
from kdtrain.report.gains import NOISE, gain_per_width, gain_verdict

KEEP = 0.95
"""The headline's bar: the smallest student keeping this share of the best teacher's accuracy."""


# --------------------------------------------------------------------------- data


@dataclass
class StudyData:
    name: str
    objectives: dict
    students: pd.DataFrame
    """Complete trials: one row per MLflow trial run (metrics, dotted params, run id, trial number)."""
    teachers: pd.DataFrame
    baselines: pd.DataFrame
    counts: dict
    time_spent: str
    """Training time and whole trial time, as kdtrain status words them (kdtrain.study.progress.time_spent)."""
    importances: dict
    history: pd.DataFrame
    """trial number and first objective value of complete trials, in order."""
    link: str | None
    """MLflow UI runs view of the study's experiment on its tracking server (None for a local store)."""
    parent_run_id: str | None
    tracking_uri: str | None = None
    """Where the study's runs live (what it was given, else what the study recorded)."""
    confirms: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    """kdtrain confirm's runs: one row per (trial, seed), with the paired baseline's accuracies."""
    hypervolume: list = dataclasses.field(default_factory=list)
    """(training seconds so far, hypervolume) after each finished trial (multi-objective studies)."""
    constraints: dict = dataclasses.field(default_factory=dict)
    """study.constraints: the front holds the trials that meet them (kdtrain.pareto.feasible), as Optuna's does."""

    @property
    def confirmed(self) -> pd.DataFrame:
        """kdtrain confirm's numbers per trial (see confirmed_stats); empty before any confirm."""
        return confirmed_stats(self.confirms)

    @property
    def feasible(self) -> pd.Series:
        """Which students meet the study's constraints."""
        return (
            self.students.apply(lambda r: feasible(self.constraints, r.to_dict()), axis=1).astype(bool)
            if self.constraints and not self.students.empty
            else pd.Series(True, index=self.students.index)
        )

    @property
    def front(self) -> pd.DataFrame:
        ok = self.students[self.feasible]
        if ok.empty:
            return ok
        mask = front_mask(ok[list(self.objectives)].to_numpy().tolist(), list(self.objectives.values()))
        return ok[mask].sort_values(list(self.objectives)[-1])


def load(study_name: str, tracking_uri: str | None = None, storage_url: str | None = None) -> StudyData:
    from kdtrain.study import progress, search
    from kdtrain.tracking.client import Tracker

    study = search.load(study_name, storage_url)
    cfg = search.study_config(study)
    tracking_uri = search.tracking_uri(study, tracking_uri)
    tracker = Tracker(tracking_uri)
    runs, exp_id = tracker.runs_frame(study_name)
    for key in ("kd.temperature", "kd.alpha", "student.width", "train.lr", "teacher.width"):
        if key in runs:
            runs[key] = pd.to_numeric(runs[key], errors="coerce")
    later = (
        (
            "kd_gain",
            "kd_gain_test",
            "kd_gain_sigma",
            "baseline_val_accuracy",
            "baseline_val_accuracy_std",
            "baseline_test_accuracy",
            "baseline_test_accuracy_std",
        )
        if cfg.study.follow_up == "after"
        else ()
    )
    for key in ("latency_ms_p50", "latency_ms_p95", "throughput", *later):  # none before a sweep's follow-up
        if key not in runs:
            runs[key] = np.nan
    role = runs["tag:kdtrain.role"]
    complete = {t.number: t for t in search.trials(study, "COMPLETE")}
    students = runs[(role == "student") & (runs["tag:optuna.state"] == "COMPLETE")].copy()
    students["trial"] = pd.to_numeric(students["tag:optuna.trial"], errors="coerce").astype("Int64")
    students = students[students["trial"].isin(list(complete))].sort_values("trial").reset_index(drop=True)

    c = search.counts(study)
    first = next(iter(cfg.study.objectives))
    importances = search.importances(study, cfg.study.objectives[first] == "maximize") if len(complete) >= 3 else {}
    history = pd.DataFrame({"trial": list(complete), "value": [t.values[0] for t in complete.values()]})
    return StudyData(
        study_name,
        dict(cfg.study.objectives),
        students,
        runs[role == "teacher"].reset_index(drop=True),
        runs[role == "baseline"].reset_index(drop=True),
        c,
        progress.time_spent(study),
        importances,
        history,
        tracker.link(exp_id) if exp_id else None,
        study.user_attrs.get(search.A_PARENT),
        tracking_uri,
        runs[role == "confirm"].reset_index(drop=True),
        progress.hv_history(study, cfg.study.objectives, cfg.study.constraints),
        dict(cfg.study.constraints),
    )


# --------------------------------------------------------------------------- headline and tables


def _confirm_groups(confirms: pd.DataFrame) -> pd.DataFrame:
    """kdtrain confirm's runs -> one row per confirmed trial (index: trial number): seeds, the mean and sample std
    of val and test accuracy (fractions) and of the paired test gain over the same seeds' baselines (points); a
    std is NaN for a single seed."""
    if confirms.empty or "tag:optuna.trial" not in confirms:
        return pd.DataFrame(columns=["seeds", "val", "val_std", "test", "test_std", "gain", "gain_std"])
    c = confirms.assign(
        trial=pd.to_numeric(confirms["tag:optuna.trial"]).astype(int), gain=100 * confirms["kd_gain_test"]
    )
    g = c.groupby("trial")
    return pd.DataFrame(
        {
            "seeds": g.size(),
            "val": g["val_accuracy"].mean(),
            "val_std": g["val_accuracy"].std(),
            "test": g["test_accuracy"].mean(),
            "test_std": g["test_accuracy"].std(),
            "gain": g["gain"].mean(),
            "gain_std": g["gain"].std(),
        }
    )


def confirmed_stats(confirms: pd.DataFrame) -> pd.DataFrame:
    """_confirm_groups with a single seed's spread as 0: what decisions (headline, verdict, register) read."""
    return _confirm_groups(confirms).fillna(0.0)


def decided_on(d: StudyData) -> pd.DataFrame:
    """The students as a decision should see them: a confirmed trial's val and test accuracy are its means over
    the new seeds (confirmed_seeds > 0), the others' their single training."""
    s = d.students.copy()
    s["confirmed_seeds"] = 0
    c = d.confirmed
    if s.empty or c.empty:
        return s
    hit = s["trial"].astype(int).isin(c.index)
    rows = c.loc[s.loc[hit, "trial"].astype(int)]
    s.loc[hit, "val_accuracy"] = rows["val"].to_numpy()
    s.loc[hit, "test_accuracy"] = rows["test"].to_numpy()
    s.loc[hit, "confirmed_seeds"] = rows["seeds"].to_numpy()
    return s


def headline(d: StudyData) -> dict:
    """The classic answer: smallest student keeping 95% of the best teacher, and the most accurate
    student smaller than that teacher (accuracy on the validation split, test shown beside)."""
    if d.teachers.empty or d.students.empty:
        return {}
    t = d.teachers.loc[d.teachers["val_accuracy"].idxmax()]
    # a teacher known by its logits (a logits or ONNX file) has no params or latency: NaN, said so in the text
    out = {
        "teacher": str(t["tag:mlflow.runName"]).removeprefix("teacher-"),
        "teacher_val_accuracy": t["val_accuracy"],
        **{f"teacher_{k}": t.get(k, np.nan) for k in ("params", "latency_ms_p50", "throughput")},
    }
    students = decided_on(d)  # confirmed trials by their confirmed means
    keep = students[students["val_accuracy"] >= KEEP * t["val_accuracy"]]
    if not keep.empty:
        s = keep.sort_values(["params", "val_accuracy"], ascending=[True, False]).iloc[0]
        out["smallest"] = _student_summary(s, t)
    smaller = students[students["params"] < out["teacher_params"]]
    if not smaller.empty:
        out["best_smaller"] = _student_summary(smaller.loc[smaller["val_accuracy"].idxmax()], t)
    return out


def _student_summary(s, t) -> dict:
    return {
        "trial": int(s["trial"]),
        "run_id": s["run_id"],
        "val_accuracy": s["val_accuracy"],
        "confirmed_seeds": int(s.get("confirmed_seeds", 0)),
        "test_accuracy": s["test_accuracy"],
        "params": s["params"],
        "pct_of_teacher": 100 * s["val_accuracy"] / t["val_accuracy"] if t["val_accuracy"] > 0 else np.nan,
        "x_smaller": t.get("params", np.nan) / s["params"],
        "x_faster_b1": t.get("latency_ms_p50", np.nan) / s["latency_ms_p50"],
        "x_throughput": s["throughput"] / t.get("throughput", np.nan),
    }


FRONT_COLUMNS = [
    "trial",
    "val_accuracy",
    "test_accuracy",
    "% of teacher",
    "test gain",
    "params",
    "size_bytes",
    "flops",
    "latency_ms_p50",
    "throughput",
    "x smaller",
    "x faster (b1)",
    "kd.temperature",
    "kd.alpha",
    "student.width",
    "kd.teachers",
    "kd.ensemble",
    "kd.loss",
    "kd.features",
    "run_id",
]


def front_table(d: StudyData) -> pd.DataFrame:
    f = d.front.copy()
    if f.empty:
        return pd.DataFrame(columns=FRONT_COLUMNS)
    h = headline(d)
    if h:
        f["% of teacher"] = 100 * f["val_accuracy"] / h["teacher_val_accuracy"]
        f["x smaller"] = h["teacher_params"] / f["params"]
        f["x faster (b1)"] = h["teacher_latency_ms_p50"] / f["latency_ms_p50"]
    if "kd_gain_test" in f:  # points over the same-width no-teacher baseline's mean (after the follow-up)
        f["test gain"] = 100 * f["kd_gain_test"]
    for col in FRONT_COLUMNS:
        if col not in f:
            f[col] = np.nan
    # kd.features: the pairs and losses each trial used, shown when a trial of the front used any
    cols = [c for c in FRONT_COLUMNS if c != "kd.features" or f[c].fillna("none").ne("none").any()]
    return f[cols].reset_index(drop=True)


def confirm_table(d: StudyData) -> pd.DataFrame:
    """kdtrain confirm's runs per trial: seeds, mean and spread of val / test accuracy and of the paired test
    gain over the baseline trained with the same seed (points)."""
    if d.confirms.empty:
        return pd.DataFrame()
    g = _confirm_groups(d.confirms)
    out = pd.DataFrame(
        {
            "seeds": g["seeds"],
            "val_accuracy %": 100 * g["val"],
            "val std": 100 * g["val_std"],
            "test_accuracy %": 100 * g["test"],
            "test std": 100 * g["test_std"],
            "paired test gain (points)": g["gain"],
            "gain std": g["gain_std"],
        }
    )
    return out.rename_axis("trial").reset_index()


def size_buckets(studies: list[StudyData]) -> pd.DataFrame:
    """Best student (val accuracy) per parameter-count bucket (1-3-10 steps) per study."""
    rows = []
    for d in studies:
        for _, s in d.students.iterrows():
            exp = math.log10(max(1.0, s["params"]))
            lo = 10 ** math.floor(exp)
            edge = lo * 3 if s["params"] < lo * 3 else lo * 10
            rows.append(
                {
                    "bucket": f"<= {int(edge):,}",
                    "edge": edge,
                    "study": d.name,
                    "trial": int(s["trial"]),
                    "val_accuracy": s["val_accuracy"],
                    "params": s["params"],
                }
            )
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    best = df.loc[df.groupby(["edge", "study"])["val_accuracy"].idxmax()].sort_values(["edge", "study"])
    return best.drop(columns="edge").reset_index(drop=True)


# --------------------------------------------------------------------------- writing


def _mlflow_link(d: StudyData) -> str:
    """The study's runs in the MLflow UI: a link on a tracking server; for a local store, the command that serves
    it and prints the link (its port is the user's choice, not known here)."""
    if d.link:
        return f'<a href="{html.escape(d.link)}">runs in MLflow</a>'
    return f"runs in MLflow: <code>kdtrain ui {html.escape(d.name)}</code> serves them and prints the link"


CAPTIONS = {
    "importances": "A hint where to search next, not a measured effect: Optuna's importances are fitted to "
    "few trials, and settings that move together (a student's width and its size, the first "
    "trials' sizes at the base T and alpha) share their credit."
}


def _figures(names: list[str]) -> str:
    return "\n".join(
        f'<figure><img src="{n}.png" alt="{n}"><figcaption>{html.escape(CAPTIONS.get(n, ""))} '
        f'<a href="{n}.svg">{n}.svg</a></figcaption></figure>'
        for n in names
    )


def _headline_text(d: StudyData) -> list[str]:
    h = headline(d)
    if not h:
        return ["No complete trials or no teacher yet."]
    known = not pd.isna(h["teacher_params"])
    lines = [
        f"Best teacher: {h['teacher']} at {h['teacher_val_accuracy']:.4f} val accuracy, "
        + (f"{h['teacher_params']:,.0f} params." if known else "its size unknown (known by its logits only).")
    ]
    s = h.get("smallest")
    if s:
        costs = (
            (
                f", {s['x_smaller']:.1f}x smaller, {s['x_faster_b1']:.2f}x faster at batch 1 and "
                f"{s['x_throughput']:.1f}x the throughput at batch "
                f"{int(d.students.get('profile.throughput_batch', pd.Series(['256'])).iloc[0])}"
                f" ({d.students.get('profile.backend', pd.Series(['eager'])).iloc[0]})"
            )
            if known
            else ""
        )
        if known and pd.isna(s["x_faster_b1"]):  # latency not measured yet: the sweep stopped before its follow-up
            costs = f", {s['x_smaller']:.1f}x smaller (latency not measured yet)"
        how = f", confirmed over {s['confirmed_seeds']} new seeds" if s["confirmed_seeds"] else ""
        lines.append(
            f"The smallest student keeping {KEEP:.0%} of its accuracy is trial {s['trial']}: "
            f"{s['val_accuracy']:.4f} val / {s['test_accuracy']:.4f} test accuracy{how} "
            f"({s['pct_of_teacher']:.1f}% of the teacher){costs}."
        )
    else:
        lines.append(f"No student reaches {KEEP:.0%} of the teacher's accuracy yet.")
    b = h.get("best_smaller")
    if b:
        how = f" (confirmed over {b['confirmed_seeds']} new seeds)" if b["confirmed_seeds"] else ""
        lines.append(
            f"The most accurate student smaller than the teacher is trial {b['trial']}: "
            f"{b['val_accuracy']:.4f} val accuracy{how}, {b['x_smaller']:.1f}x smaller."
        )
    verdict = gain_verdict(d)
    return lines + below_baseline(d) + ([verdict] if verdict else [])


def below_baseline(d: StudyData) -> list[str]:
    """The front's students that a no-teacher student of their width beats on test, said once."""
    f = d.front
    if "kd_gain_test" not in f:
        return []
    c = d.confirmed  # kdtrain confirm's paired gain where it ran (as register/export --pareto judge), else the run's
    gain = {
        int(t): c.loc[int(t), "gain"] if int(t) in c.index else 100 * g
        for t, g in zip(f["trial"], f["kd_gain_test"], strict=False)
    }
    low = {t: g for t, g in gain.items() if g < 0}
    if not low:
        return []
    which = ", ".join(f"{t} ({g:+.1f})" for t, g in low.items())
    return [
        (
            f"On the front, trial{'s' if len(low) > 1 else ''} {which} score{'' if len(low) > 1 else 's'} below the "
            f"no-teacher baseline of {'their' if len(low) > 1 else 'its'} width on test (points): a student trained "
            "alone is the better choice there; register and export --pareto leave them out (--min-gain any "
            "keeps them)."
        )
    ]


def label_lines(d: StudyData) -> list[str]:
    """How many labels the study's students used (data.labels, data.unlabeled), from their runs' metrics."""
    cols = ("labelled_rows", "val_rows", "unlabelled_rows")
    if d.students.empty or not all(c in d.students for c in cols) or d.students["unlabelled_rows"].fillna(0).max() == 0:
        return []
    lab, val, unl = (int(d.students[c].dropna().iloc[0]) for c in cols)
    return [
        (
            f"Labels: {lab:,} rows to train on and {val:,} to select on (the validation split); {unl:,} rows "
            "unlabelled, in the distillation term only. The no-teacher baseline trained on the same labelled rows "
            "for as many steps. Selection on so few rows is noisy: confirm the pick with new seeds."
        )
    ]


def teacher_table(d: StudyData) -> pd.DataFrame:
    """Each teacher's own data and its accuracy there (source) beside its accuracy on the student's test split
    ("source only": the teacher alone on the student's task)."""
    if d.teachers.empty:
        return pd.DataFrame()
    t = d.teachers
    col = lambda k: t[k] if k in t else pd.Series([np.nan] * len(t))  # noqa: E731
    data_col = t["tag:kdtrain.teacher_data"] if "tag:kdtrain.teacher_data" in t else pd.Series([None] * len(t))
    table = pd.DataFrame(
        {
            "teacher": [str(n).removeprefix("teacher-") for n in t["tag:mlflow.runName"]],
            "its data": ["the student's" if pd.isna(x) or x is None else str(x) for x in data_col],
            "params": col("params").to_numpy(),
            "source test_accuracy": col("source_test_accuracy").to_numpy(),
            "test_accuracy on the student's data": col("test_accuracy").to_numpy(),
        }
    )
    # a teacher made anew because its reference moved (an MLflow alias, edited python: code): kdtrain.distill.references
    moved = col("reference_moved").fillna(0).to_numpy() > 0
    weights, arch = col("teacher.weights").to_numpy(), col("teacher.arch").to_numpy()
    made = [
        ""
        if not m
        else f"reloaded: {w} names other weights than when it was cached"
        if isinstance(w, str) and w not in ("", "None")
        else f"retrained: {a} changed since it was cached"
        for m, w, a in zip(moved, weights, arch, strict=False)
    ]
    return table.assign(reference=made) if any(made) else table


def write_study(d: StudyData, out: Path) -> Path:
    """reports/<study>/: index.html, summary.md, trials.csv, pareto.csv and the pictures (PNG and SVG)."""
    folder = out / d.name
    folder.mkdir(parents=True, exist_ok=True)
    d.students.drop(columns=[c for c in d.students if c.startswith("tag:")]).to_csv(folder / "trials.csv", index=False)
    table, gains, confirms, teachers = front_table(d), gain_per_width(d), confirm_table(d), teacher_table(d)
    gains = gains.drop(columns="pending") if "pending" in gains and not gains["pending"].any() else gains
    table.to_csv(folder / "pareto.csv", index=False)
    fronts, hyper = _pictures(d, folder, gains)
    c = d.counts
    counts = f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed trials; {d.time_spent}" + (
        f"; hypervolume {d.hypervolume[-1][1]:.4f}" if d.hypervolume else ""
    )
    head = _headline_text(d) + label_lines(d)
    (folder / "summary.md").write_text(
        "\n".join(
            [
                f"# {d.name}",
                "",
                *[f"- {line}" for line in head],
                f"- {counts}",
                "",
                "## Pareto-optimal students",
                "",
                pages.markdown_table(table),
                "",
                "## Teachers",
                "",
                pages.markdown_table(teachers),
                "",
                "## Distillation gain per width",
                "",
                pages.markdown_table(gains),
                "",
                "## Confirmed trials (new seeds)",
                "",
                pages.markdown_table(confirms),
                "",
            ]
        )
    )
    (folder / "index.html").write_text(_page(d, head, counts, fronts, hyper, table, teachers, gains, confirms))
    return folder


def _pictures(d: StudyData, folder: Path, gains: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(the front pictures, the others) saved in folder: their names."""
    if d.students.empty:
        return [], []
    fronts = [plots.front_plot(d, "params", "parameters", folder, "accuracy_vs_params")]
    if d.students["latency_ms_p50"].notna().any():  # none measured yet: a sweep stopped before its follow-up
        fronts.append(
            plots.front_plot(
                d, "latency_ms_p50", "latency p50 (ms, batch 1)", folder, "accuracy_vs_latency", colour="kd.alpha"
            )
        )
    return fronts, plots.hyper_plots(d, folder) + plots.progress_plots(d, folder, gains, NOISE)


def _page(
    d: StudyData,
    head: list[str],
    counts: str,
    fronts: list[str],
    hyper: list[str],
    table: pd.DataFrame,
    teachers: pd.DataFrame,
    gains: pd.DataFrame,
    confirms: pd.DataFrame,
) -> str:
    """The study's index.html."""
    objectives = ", ".join(f"{k} ({v})" for k, v in d.objectives.items())
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kdtrain report: {
        html.escape(d.name)
    }</title>
<style>{pages.CSS}</style></head><body>
<h1>{html.escape(d.name)}</h1>
<p class="muted">objectives: {html.escape(objectives)} &middot; {html.escape(counts)} &middot;
{_mlflow_link(d)} &middot; <a href="trials.csv">trials.csv</a> &middot;
<a href="pareto.csv">pareto.csv</a> &middot; <a href="summary.md">summary.md</a></p>
<div class="headline">{"<br>".join(html.escape(x) for x in head)}</div>
<h2>Accuracy against size and latency</h2>
<p class="muted">Pareto front as a step line; dominated trials faded; teachers as stars; no-teacher baselines as red
crosses. Latency at batch 1.</p>
{_figures(fronts)}
<h2>Pareto-optimal students</h2>
<p class="muted">test gain: points over the same-width no-teacher baseline's mean; below 0, a student of that width
trained without a teacher is more accurate on test (register and export --pareto still include it).</p>
<div style="overflow-x:auto">{pages.html_table(table, "pareto", d.link)}</div>
<h2>Teachers</h2>
<p class="muted">Each teacher's accuracy on its own data's test split (source) and on the student's test split, mapped
to the student's classes: what the teacher alone would score on the student's task.</p>
{pages.html_table(teachers, "teachers") if not teachers.empty else "<p>None.</p>"}
<h2>Distillation gain per width</h2>
<p class="muted">Per width, the trial with the best validation accuracy against the no-teacher baseline's mean over
its seeds; gains in points; kd_gain_sigma: the val gain in units of the baseline's seed spread; beyond_noise: the
test gain exceeds {NOISE:g} x the baseline's test spread (never with one baseline seed: no spread to measure).</p>
{pages.html_table(gains, "gains")}
<h2>Confirmed trials (new seeds)</h2>
<p class="muted">kdtrain confirm: each trial retrained with new seeds, each paired with the baseline of the same
seed; mean and sample std over seeds.</p>
{
        pages.html_table(confirms, "confirms")
        if not confirms.empty
        else "<p>None yet: kdtrain confirm " + html.escape(d.name) + " --pareto --seeds 3</p>"
    }
<h2>How the hyperparameters mattered</h2>
{_figures(hyper)}
</body></html>"""


def write_comparison(studies: list[StudyData], out: Path, name: str) -> Path:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    plot = plots.compare_plot(studies, folder)
    buckets = size_buckets(studies)
    buckets.to_csv(folder / "buckets.csv", index=False)
    fronts = pd.concat([front_table(d).assign(study=d.name) for d in studies], ignore_index=True)
    fronts.to_csv(folder / "pareto.csv", index=False)
    links = " &middot; ".join(
        f'<a href="../{html.escape(d.name)}/index.html">{html.escape(d.name)}</a>' for d in studies
    )
    (folder / "summary.md").write_text(
        f"# {name}\n\n## Best student per size bucket\n\n{pages.markdown_table(buckets)}\n"
    )
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kdtrain comparison: {html.escape(name)}</title>
<style>{pages.CSS}</style></head><body><h1>{html.escape(name)}</h1>
<p class="muted">studies: {links}</p>
{_figures([plot])}
<h2>Best student per size bucket</h2>
{pages.html_table(buckets, "buckets")}
</body></html>"""
    (folder / "index.html").write_text(page)
    return folder


def build(
    studies: list[str],
    out: str | Path = "reports",
    tracking_uri: str | None = None,
    storage_url: str | None = None,
    name: str | None = None,
    log_to_mlflow: bool = True,
) -> list[Path]:
    """Write each study's report (and a comparison when there are several); log each to its parent run."""
    from kdtrain.tracking.client import Tracker

    out = Path(out).resolve()
    data = [load(s, tracking_uri, storage_url) for s in studies]
    folders = [write_study(d, out) for d in data]
    if len(data) > 1:
        folders.append(write_comparison(data, out, name or "compare-" + "-vs-".join(studies)))
    if log_to_mlflow:
        for d, folder in zip(data, folders, strict=False):
            if d.parent_run_id:
                Tracker(d.tracking_uri).log_dir(d.parent_run_id, folder, "report")
    return folders
