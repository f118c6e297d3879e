"""A study read into numbers: StudyData (its Optuna trials and MLflow runs as pandas frames, loaded by `load`) and
the tables and figures the report, kdtrain confirm and kdtrain register read from it: the headline's students, the
Pareto front, kdtrain confirm's means, the teachers, the best student per size bucket. Writing the pages is
kdtrain.report.build."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kdtrain.pareto import feasible, front_mask

KEEP = 0.95
"""The headline's bar: the smallest student keeping this share of the best teacher's accuracy."""


@dataclass
class StudyData:
    """One study read for a report or a notebook: its trials, students, teachers, baselines and confirms as pandas
    frames (MLflow's metrics and params beside Optuna's values), its objectives and hypervolume history."""

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
    """A study read from its Optuna storage and its MLflow runs: the complete trials' student runs, the teacher,
    baseline and confirm runs, and the study's counts, time, importances and hypervolume."""
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
        name=study_name,
        objectives=dict(cfg.study.objectives),
        students=students,
        teachers=runs[role == "teacher"].reset_index(drop=True),
        baselines=runs[role == "baseline"].reset_index(drop=True),
        counts=c,
        time_spent=progress.time_spent(study),
        importances=importances,
        history=history,
        link=tracker.link(exp_id) if exp_id else None,
        parent_run_id=study.user_attrs.get(search.A_PARENT),
        tracking_uri=tracking_uri,
        confirms=runs[role == "confirm"].reset_index(drop=True),
        hypervolume=progress.hv_history(study, cfg.study.objectives, cfg.study.constraints),
        constraints=dict(cfg.study.constraints),
    )


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
