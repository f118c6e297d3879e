"""B7: kdtrain against a hand-written Optuna + MLflow study, on the quickstart's task, side by side.

    python benchmarks/b7.py [--out FILE.json] [--work DIR] [--mode one-core|machine|both|shared] [--trials 20]
                            [--repeats N]

one-core: both sides start at once, each pinned to its own core with taskset (kdtrain with its defaults on the
one CPU it is given, the hand-written script likewise). machine: each side alone on the whole machine with its own
defaults (kdtrain sweep with no flags; the script as written), one after the other. shared: a quickstart sweep
alone, then two started together (the issue's "two sweeps side by side"), wall clocks. Every run starts from empty
stores and caches (a fresh KDTRAIN_HOME and MLflow store; MNIST-1D's generated file is shared, about 3 s
otherwise).

The measure: the hypervolume of the complete trials' (test accuracy, log10 parameters), reference point
(0, log10 10,000: past the largest student of the search space), after each trial ends, against seconds since
the side's process was started (imports, data, teachers, stores included). Reported: each side's final
hypervolume, the seconds each needed to reach 95% of the better of the two final hypervolumes, and each side's
wall clock to its exit (for kdtrain that includes the follow-up after the trials: baselines, latency, logged
models, and the report).

The hand-written side is benchmarks/handwritten.py, kept in the repository to be read and judged.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REF_PARAMS = 10_000
"""The reference point's cost: past the largest student the quickstart can propose (width 32: 7,306 params)."""


def hypervolume(points: list[tuple[float, float]]) -> float:
    """Area dominated by (test accuracy up, params down) points, in (accuracy, log10 params) space, from the
    reference (0, log10 REF_PARAMS)."""
    ref = math.log10(REF_PARAMS)
    pts = sorted((math.log10(p), a) for a, p in points if p < REF_PARAMS)
    area, best = 0.0, 0.0
    for i, (c, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref
        area += (nxt - c) * best
    return area


def timeline(journal: Path, study: str, t0: float) -> list[tuple[float, float, int]]:
    """(seconds since t0, hypervolume so far, trial number) after each complete trial, in the order they ended."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(str(journal))))
    done = sorted((t for t in s.trials if t.state.name == "COMPLETE"), key=lambda t: t.datetime_complete)
    out, points = [], []
    for t in done:
        points.append((t.user_attrs["test_accuracy"], t.user_attrs["params"]))
        out.append((t.datetime_complete.timestamp() - t0, hypervolume(points), t.number))
    return out


def time_to(line: list[tuple[float, float, int]], target: float) -> float | None:
    return next((s for s, hv, _ in line if hv >= target - 1e-12), None)


SWEEP = ROOT / "sweeps" / "quickstart.yaml"
"""kdtrain's side (--sweep): the quickstart as shipped, or benchmarks/b7_same_space.yaml (the hand-written space)."""


def start(
    side: str, work: Path, cpus: str | None, trials: int, seed: int, sweep: Path = SWEEP
) -> tuple[subprocess.Popen, float]:
    """Start one side in its own empty folder, its sampler seeded with seed (kdtrain on `sweep`); (process, start
    time)."""
    folder = work / side
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    py = sys.executable
    if side == "kdtrain":
        kd = str(Path(py).with_name("kdtrain"))
        cmd = [kd, "sweep", str(sweep), "--set", f"study.trials={trials}", "--set", f"study.seed={seed}"]
    else:
        cmd = [
            py,
            str(ROOT / "benchmarks" / "handwritten.py"),
            "--out",
            str(folder / "out"),
            "--trials",
            str(trials),
            "--seed",
            str(seed),
        ]
    if cpus:
        cmd = ["taskset", "-c", cpus, *cmd]
    env = {k: v for k, v in os.environ.items() if k not in ("KDTRAIN_HOME", "MLFLOW_TRACKING_URI", "KDTRAIN_STORAGE")}
    log = open(folder / "log.txt", "w")
    t0 = time.time()
    return subprocess.Popen(cmd, cwd=folder, stdout=log, stderr=subprocess.STDOUT, env=env), t0


def side_result(side: str, work: Path, t0: float, t_end: float) -> dict:
    folder = work / side
    if side == "kdtrain":
        line = timeline(folder / "mlruns" / "optuna.journal", "quickstart-mnist1d", t0)
    else:
        line = timeline(folder / "out" / "optuna.log", "handwritten", t0)
    return {
        "wall_s": t_end - t0,
        "first_trial_s": line[0][0] if line else None,
        "last_trial_s": line[-1][0] if line else None,
        "final_hv": line[-1][1] if line else 0.0,
        "timeline": [[round(s, 2), round(hv, 5), n] for s, hv, n in line],
    }


def run_pair(work: Path, mode: str, trials: int, seed: int, sweep: Path = SWEEP) -> dict:
    sides = ("kdtrain", "handwritten")
    ends, starts, procs = {}, {}, {}
    if mode == "one-core":
        for side, cpu in zip(sides, ("0", "1"), strict=False):
            procs[side], starts[side] = start(side, work, cpu, trials, seed, sweep)
        while len(ends) < 2:
            for side in sides:
                if side not in ends and procs[side].poll() is not None:
                    ends[side] = time.time()
            time.sleep(0.2)
    else:
        for side in sides:
            procs[side], starts[side] = start(side, work, None, trials, seed, sweep)
            procs[side].wait()
            ends[side] = time.time()
    for side in sides:
        if procs[side].returncode:
            raise SystemExit(f"{side} failed (exit {procs[side].returncode}); see {work / side / 'log.txt'}")
    res = {side: side_result(side, work, starts[side], ends[side]) for side in sides}
    better = max(r["final_hv"] for r in res.values())
    for r in res.values():
        r["to_95_s"] = time_to([tuple(x) for x in r["timeline"]], 0.95 * better)
    k, h = res["kdtrain"], res["handwritten"]
    res["speedup_to_95"] = h["to_95_s"] / k["to_95_s"] if k["to_95_s"] and h["to_95_s"] else None
    res["hv_ratio"] = k["final_hv"] / h["final_hv"] if h["final_hv"] else None
    return res


def shared(work: Path, trials: int) -> dict:
    """Item 3 of the issue: one quickstart sweep alone on the whole machine, then two started together (each in
    its own folder, each with its defaults): wall clocks and their ratio."""

    def sweep(folder: Path, seed: int) -> tuple[subprocess.Popen, float]:
        return start("kdtrain", folder, None, trials, seed)

    p, t0 = sweep(work / "alone", 0)
    if p.wait():
        raise SystemExit(f"the sweep alone failed; see {work / 'alone'}")
    alone = time.time() - t0
    pair = [sweep(work / f"side-{i}", i) for i in range(2)]
    walls = []
    for p, t0 in pair:
        p.wait()
        walls.append(time.time() - t0)
    if any(p.returncode for p, _ in pair):
        raise SystemExit(f"a sweep failed; see {work}")
    return {"alone_s": alone, "side_by_side_s": walls, "ratio": max(walls) / alone}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--work", default="/tmp/kdtrain-b7", help="the sides' folders (emptied first)")
    ap.add_argument("--mode", default="both", choices=["one-core", "machine", "both", "shared"])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--sweep", default=str(SWEEP), help="kdtrain's sweep file (default: sweeps/quickstart.yaml)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per mode, sampler seeds 0, 1, ... on both sides")
    a = ap.parse_args()
    work = Path(a.work).resolve()
    sweep = Path(a.sweep).resolve()
    out = {
        "date": datetime.date.today().isoformat(),
        "sweep": a.sweep,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "python": platform.python_version(),
        "trials": a.trials,
        "ref_params": REF_PARAMS,
        "runs": [],
    }
    if a.mode == "shared":
        out["shared"] = r = shared(work / "shared", a.trials)
        print(
            f"one quickstart sweep alone {r['alone_s']:.0f}s; two side by side {r['side_by_side_s'][0]:.0f}s and "
            f"{r['side_by_side_s'][1]:.0f}s ({r['ratio']:.2f}x)",
            flush=True,
        )
    modes = ["one-core", "machine"] if a.mode == "both" else [] if a.mode == "shared" else [a.mode]
    for mode in modes:
        for i in range(a.repeats):
            r = run_pair(work / f"{mode}-{i}", mode, a.trials, seed=i, sweep=sweep)
            r["mode"], r["seed"] = mode, i
            out["runs"].append(r)
            k, h = r["kdtrain"], r["handwritten"]
            print(
                f"{mode}, seed {i}: to 95% of the better final hypervolume: kdtrain {k['to_95_s']:.1f}s, hand-written "
                f"{h['to_95_s']:.1f}s ({r['speedup_to_95']:.2f}x); final hypervolume {k['final_hv']:.4f} vs "
                f"{h['final_hv']:.4f} ({r['hv_ratio']:.3f}x); wall {k['wall_s']:.0f}s vs {h['wall_s']:.0f}s; "
                f"first trial ends {k['first_trial_s']:.1f}s vs {h['first_trial_s']:.1f}s",
                flush=True,
            )
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
