"""MLflow runs + Optuna trials -> pandas -> Pareto plots and an offline HTML / Markdown report.

One study: reports/<study>/ with index.html, plots (PNG and SVG), trials.csv,
pareto.csv and summary.md. Several studies: their fronts overlaid and the best
student per size bucket, in reports/<name>/, beside each study's own report.
The study's numbers come from kdtrain.report.study_data (StudyData); this module
puts them in words and pages.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from kdtrain.report import pages, plots
from kdtrain.report.gains import NOISE, gain_per_width, gain_verdict
from kdtrain.report.study_data import (
    KEEP,
    StudyData,
    confirm_table,
    front_table,
    headline,
    load,
    size_buckets,
    teacher_table,
)


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


def counts_line(d: StudyData) -> str:
    """The study's trials by state, its time and (multi-objective) its hypervolume, in one line."""
    c = d.counts
    return f"{c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed trials; {d.time_spent}" + (
        f"; hypervolume {d.hypervolume[-1][1]:.4f}" if d.hypervolume else ""
    )


def summary_lines(d: StudyData) -> list[str]:
    """What the study's report opens with (summary.md's list, index.html's headline and counts): the headline, the
    labels used and the counts. kdtrain confirm prints it after retraining."""
    return _headline_text(d) + label_lines(d) + [counts_line(d)]


def write_study(d: StudyData, out: Path) -> Path:
    """reports/<study>/: index.html, summary.md, trials.csv, pareto.csv and the pictures (PNG and SVG)."""
    folder = out / d.name
    folder.mkdir(parents=True, exist_ok=True)
    d.students.drop(columns=[c for c in d.students if c.startswith("tag:")]).to_csv(folder / "trials.csv", index=False)
    table, gains, confirms, teachers = front_table(d), gain_per_width(d), confirm_table(d), teacher_table(d)
    gains = gains.drop(columns="pending") if "pending" in gains and not gains["pending"].any() else gains
    table.to_csv(folder / "pareto.csv", index=False)
    fronts, hyper = _pictures(d, folder, gains)
    counts = counts_line(d)
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
    return write([load(s, tracking_uri, storage_url) for s in studies], out, name, log_to_mlflow)


def write(data: list[StudyData], out: str | Path = "reports", name: str | None = None, log_to_mlflow: bool = True):
    """build's writing, for studies read already: each study's report, a comparison of several (named `name`, else
    after the studies), each logged to its study's parent run. The folders written."""
    from kdtrain.tracking.client import Tracker

    out = Path(out).resolve()
    folders = [write_study(d, out) for d in data]
    if len(data) > 1:
        folders.append(write_comparison(data, out, name or "compare-" + "-vs-".join(d.name for d in data)))
    if log_to_mlflow:
        for d, folder in zip(data, folders, strict=False):
            if d.parent_run_id:
                Tracker(d.tracking_uri).log_dir(d.parent_run_id, folder, "report")
    return folders
