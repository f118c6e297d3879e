"""What a person watches: tables, per-epoch progress and sweep progress.

On a terminal, progress is a live tqdm bar; in a log file (SLURM, nohup, a worker's log) it is plain
timestamped lines, a few per run, so that the log stays readable the next morning.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time

from tqdm import tqdm

from kdtrain.shared import warning_once
from kdtrain.study.progress import fmt_seconds


def table(rows: list[dict], columns: list[str]) -> str:
    """Plain aligned text table (first column left-aligned, the others right-aligned)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]

    def fmt(vals):
        return "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(vals, widths, strict=False)))

    return "\n".join([fmt(columns), fmt(["-" * w for w in widths])] + [fmt(r) for r in cells])


def front_table(study) -> str:
    """The study's Pareto front (or best trial) with objectives and parameters, as a text table."""
    from kdtrain.study.search import A_OBJECTIVES, front_or_reason

    names = study.user_attrs.get(A_OBJECTIVES, [f"value{i}" for i in range(len(study.directions))])
    front, reason = front_or_reason(study)
    rows = []
    for t in sorted(front, key=lambda t: t.values):
        row = {"trial": t.number}
        row.update({n: f"{v:.4g}" for n, v in zip(names, t.values, strict=False)})
        row.update({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in t.params.items()})
        rows.append(row)
    if not rows:
        return reason
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return f"pareto front of {study.study_name} ({len(rows)} trials):\n" + table(rows, cols)


def status_lines(study) -> list[str]:
    """kdtrain status of one study: its counts, hypervolume, running trials, trials whose MLflow writes wait for
    the tracking server on this machine, and its front."""
    import datetime

    from kdtrain.study import search
    from kdtrain.study.progress import hv_history, time_spent
    from kdtrain.tracking import client

    c, name = search.counts(study), study.study_name
    lines = [
        (
            f"study {name}: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed, "
            f"{c['RUNNING']} running, {c['WAITING']} waiting (target {search.target(study) or '?'})"
        )
    ]
    scfg = search.study_config(study).study
    hv = hv_history(study, scfg.objectives, scfg.constraints)
    lines.append(
        f"  {time_spent(study)}" + (f"; hypervolume {hv[-1][1]:.4f} after {len(hv)} finished trials" if hv else "")
    )
    for t in search.trials(study, "RUNNING"):
        age = fmt_seconds((datetime.datetime.now() - t.datetime_start).total_seconds()) if t.datetime_start else "?"
        where = f"{t.user_attrs.get(search.T_HOST, '?')} (pid {t.user_attrs.get(search.T_PID, '?')})"
        lines.append(
            f"  trial {t.number}: its worker on {where} is gone; the next kdtrain sweep or worker fails "
            "it and queues its settings again"
            if search.gone(t)
            else f"  trial {t.number} running for {age} on {where}"
        )
    kept = client.kept_trials(search.tracking_uri(study), name)
    if kept:
        lines.append(
            f"  {len(kept)} finished trial(s) not yet in MLflow ({', '.join(map(str, kept))}): their writes "
            "wait on this machine for the tracking server; the next kdtrain sweep or worker sends them"
        )
    return [*lines, front_table(study)]


def profile_row(label: str, width: int, r: dict, ref: dict) -> dict:
    """One model's deployment metrics as table cells, with ratios against the reference model's."""
    return {
        "model": label,
        "width": width,
        "params": f"{r['params']:,}",
        "size_kB": f"{r['size_bytes'] / 1024:.1f}",
        "flops": f"{r['flops']:,}",
        "p50_ms": f"{r['latency_ms_p50']:.4f}",
        "p95_ms": f"{r['latency_ms_p95']:.4f}",
        "cv": f"{r['latency_cv']:.0%}" + ("!" if r["latency_noisy"] else ""),
        "samples/s": f"{r['throughput']:,.0f}",
        "x smaller": f"{ref['params'] / r['params']:.1f}",
        "x faster b1": f"{ref['latency_ms_p50'] / r['latency_ms_p50']:.2f}",
        "x thrpt": f"{r['throughput'] / ref['throughput']:.2f}",
    }


def confirm_rows(summaries: list[dict]) -> list[dict]:
    """kdtrain confirm's summaries as table cells (accuracies in percent, mean ± sample std over seeds)."""
    pm = lambda d, k: f"{100 * d[k]:.2f} ± {100 * d[k + '_std']:.2f}"  # noqa: E731
    rows = [
        {
            "trial": d["trial"],
            "seeds": d["seeds"],
            "val_acc %": pm(d, "val_accuracy"),
            "test_acc %": pm(d, "test_accuracy"),
            "gain over baseline (test, paired) pts": pm(d, "kd_gain_test"),
        }
        for d in summaries
    ]
    if any("feature_gain_test" in d for d in summaries):  # kd.features trials: over the same trial without pairs
        for row, d in zip(rows, summaries, strict=False):
            row["feature pairs over logit KD (test, paired) pts"] = (
                pm(d, "feature_gain_test") if "feature_gain_test" in d else "-"
            )
    return rows


class Countdown:
    """`k/N` and an ETA for a known number of steps of similar length (kdtrain confirm's trainings):
    step(label) says which one starts, with the time so far and the time left at the mean pace."""

    def __init__(self, total: int, what: str, stream=None):
        self.total, self.what, self.done, self.start = total, what, 0, time.monotonic()
        self.stream = stream

    def step(self, label: str) -> None:
        elapsed = time.monotonic() - self.start
        eta = fmt_seconds(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        self.done += 1
        _stamp(
            f"{self.what} {self.done}/{self.total}: {label}  elapsed {fmt_seconds(elapsed)}  ETA {eta}",
            self.stream or sys.stdout,
        )

    def epoch(self, s) -> None:
        """While the first training runs (no pace known yet, the ETA was "?"): its pace and the ETA it gives, the
        trainings taken alike, after its first epoch and every quarter of its epochs."""
        if self.done != 1 or s.epoch == s.epochs or (s.epoch != 1 and s.epoch % max(1, s.epochs // 4)):
            return
        left = (s.epochs - s.epoch) * s.seconds + (self.total - 1) * s.epochs * s.seconds
        _stamp(
            f"{self.what} 1/{self.total}: epoch {s.epoch}/{s.epochs}, {s.seconds:.2f}s/epoch  ETA ~{fmt_seconds(left)}",
            self.stream or sys.stdout,
        )


def _stamp(text: str, stream) -> None:
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}", file=stream, flush=True)


def beside_bar(line: str) -> None:
    """A worker's line on a terminal, where the sweep's bar counts the trials: a trial's result is the bar's to say
    (dropped); the rest (baselines training, follow-ups, warnings) is written above the bar, which stays whole."""
    if not re.match(r"trial \d+ (complete|pruned): ", line):
        tqdm.write(line, file=sys.stdout)


class EpochProgress:
    """Per-epoch progress of one model: a bar on a terminal, a line every ~10% of epochs otherwise."""

    def __init__(self, label: str, stream=None):
        stream = stream or sys.stdout  # the stdout of the moment, not the one at import (tests swap it)
        self.label, self.stream, self.bar = label, stream, None
        self.tty = stream.isatty()

    def __call__(self, s) -> None:
        stats = (
            f"loss {s.train_loss:.4f} (kd {s.kd_loss:.4f}, ce {s.ce_loss:.4f})  val_acc {s.val_accuracy:.4f}  "
            f"{s.seconds:.2f}s/epoch"
        )
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(
                    total=s.epochs, desc=self.label, unit="epoch", file=self.stream, leave=True, dynamic_ncols=True
                )
            self.bar.set_postfix_str(stats, refresh=False)
            self.bar.update(s.epoch - self.bar.n)
            if s.epoch == s.epochs:
                self.bar.close()
        elif s.epoch == 1 or s.epoch == s.epochs or s.epoch % max(1, s.epochs // 10) == 0:
            _stamp(f"{self.label} epoch {s.epoch:>3}/{s.epochs}  {stats}", self.stream)


def teacher_progress(stream=None):
    """on_epoch(name, stats) for a teacher pool: one progress display per teacher, kept across its epochs (a bar
    is stateful: a new one per epoch would print a bar per epoch)."""
    shown: dict[str, EpochProgress] = {}
    return lambda name, s: shown.setdefault(name, EpochProgress(f"teacher {name}", stream))(s)


class SweepProgress:
    """Trials done / running / pruned / failed, best so far, elapsed, ETA, read from the study itself (so that it
    counts every worker's trials). A bar on a terminal; a timestamped line per change otherwise."""

    def __init__(self, study_name: str, storage_url: str, target: int, objectives: dict, stream=None):
        stream = stream or sys.stdout
        self.study_name, self.storage_url, self.target, self.objectives = study_name, storage_url, target, objectives
        self.stream, self.tty = stream, stream.isatty()
        self.start, self.last, self.printed = time.time(), None, 0.0
        self.done0 = self.storage = self.bar = None
        self.misses = 0  # reads failed in a row: one is a read racing a writer, three a store going away
        self.warn = warning_once(
            lambda e: (
                f"the progress of study {study_name} could not be read for "
                f"{self.misses} updates in a row; the study's storage may be unreachable"
            )
        )
        with contextlib.suppress(Exception):  # the count at the start: the ETA's rate is per trial done since
            self.done0 = self.state()[0]

    def state(self) -> tuple[int, str]:
        from kdtrain.study import search

        if self.storage is None:  # opened once: an RDB storage holds a connection pool
            self.storage = search.open_storage(self.storage_url)
        # patient=False: the progress line does not wait out an outage (the worker does, and says so once)
        study = search.load(self.study_name, self.storage_url, self.storage, patient=False)
        c = search.counts(study)
        metric, direction = next(iter(self.objectives.items()))
        vals = [t.values[0] for t in search.trials(study, "COMPLETE")]
        best = (max(vals) if direction == "maximize" else min(vals)) if vals else None
        return c["DONE"], (
            f"complete {c['COMPLETE']}, pruned {c['PRUNED']}, failed {c['FAIL']}, running "
            f"{c['RUNNING']}; best {metric} " + (f"{best:.4f}" if best is not None else "-")
        )

    def live(self, every_s: float = 2.0):
        """Update every few seconds from a thread while the block runs (the worker loop in this process)."""
        from kdtrain.shared import every

        return every(every_s, self.update, "sweep-progress")

    def update(self, final: bool = False) -> None:
        try:
            done, state = self.state()
        except Exception as e:  # noqa: BLE001 - a read racing a writer: try again on the next tick
            self.misses += 1
            if self.misses >= 3:
                self.warn(e)
            return
        self.misses = 0
        if self.done0 is None:
            self.done0 = done
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(
                    total=self.target,
                    initial=done,
                    desc=f"study {self.study_name}",
                    unit="trial",
                    file=self.stream,
                    dynamic_ncols=True,
                )
            self.bar.set_postfix_str(state, refresh=False)
            self.bar.update(done - self.bar.n)
            if final:
                self.bar.close()
        elif (done, state) != self.last or final or time.time() - self.printed > 300:
            # a log file gets a line per change (and one every 5 minutes while a long trial runs)
            elapsed, new = time.time() - self.start, done - self.done0
            eta = fmt_seconds(elapsed / new * max(0, self.target - done)) if new > 0 else "?"
            _stamp(f"trials {done}/{self.target} ({state})  elapsed {fmt_seconds(elapsed)}  ETA {eta}", self.stream)
            self.printed = time.time()
        self.last = (done, state)
