"""kdtrain against the plain distillation loop, the cost of distilling, and parallel scaling.

    python benchmarks/run.py [--out FILE.json] [--quick] [--only b1,b3,b6]

B1 loop speed: the classic loop (DataLoader over a TensorDataset at batch 64,
   the teacher's forward pass on every batch, KLDivLoss + CE, Adam 1e-3 as in
   the articles) vs kdtrain's trainer (cached teacher logits, tensors on the
   device, randperm, the sweep file's optimizer and schedule), same teacher,
   student, data and epochs; kdtrain at batch 64 and at its default batch.
   kdtrain's time includes computing the teacher's logits.
B2 cost of distilling: a KD trial vs a no-teacher trial of the same student.
B3 parallel scaling: trials per minute of the quickstart search, 1 vs 2 workers, both running the same
   trials (parameters drawn once with a seeded random sampler and queued in both studies).
B4 orchestration overhead: per trial, sweep wall time minus training time (of which b4_log_model_s logs the
   student as an MLflow logged model and b4_log_inputs_s its data as dataset inputs).
B5 memory: peak resident memory of a sweep process (a worker).
B6 pareto pruning: the quickstart study with study.pruner=pareto and with none, the same trial count, over
   3 sampler seeds each (teachers, baselines and latencies cached beforehand and shared by all runs):
   the training seconds each needs to reach 95% of the final hypervolume of the unpruned run of the same
   seed, the final hypervolumes, and how many trials of the unpruned fronts the rule would have pruned
   (replayed on the unpruned runs' own per-epoch curves, in the order their trials finished).

    python benchmarks/run.py --only b6      # B6 alone (about 10 minutes on 2 cores)

--quick runs tiny versions (synthetic data, few epochs and trials) so that a
test can keep this script working; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kdtrain import config
from kdtrain.data import datasets
from kdtrain.distill import models
from kdtrain.distill.student import distill_student
from kdtrain.distill.teachers import load_pool
from kdtrain.distill.train import accuracy, predict, seed_all

QUICK_SWEEP = """
study: {name: bench, objectives: {val_accuracy: maximize, params: minimize}, trials: 2, baseline_seeds: 1}
profile: {blocks: 2, calls: 5, warmup: 2, throughput_batch: 8}
data: {name: synthetic, size: 600, val_fraction: 0.2, seed: 1}
teachers:
  - {name: big, arch: mlp, width: 64, epochs: 5}
student: {arch: mlp, width: 8}
train: {epochs: 5, batch_size: 128, lr: 0.01}
kd: {temperature: 4.0, alpha: 0.7, teachers: [big]}
search:
  kd.temperature: {type: float, low: 1, high: 20, log: true}
  kd.alpha: {type: float, low: 0, high: 1}
  student.width: {type: int, low: 2, high: 16, log: true}
"""


ABLATION = (
    ("classic loop", False, False, False),
    ("+ cached teacher logits", True, False, False),
    ("+ device-resident batches", True, True, False),
    ("+ fused Adam", True, True, True),
)
"""B1's rows: (name, cached teacher logits, batches indexed from resident tensors instead of a DataLoader,
fused optimizer step). The last row, kdtrain's own trainer, adds soft targets computed once and per-epoch
validation."""


def ablation_loop(teacher, student, ds, cfg, batch_size: int, cached: bool, resident: bool, fused: bool):
    """The ten-line loop from the articles with kdtrain's changes switched on one at a time. Every row trains
    alike: Adam at the sweep file's lr with its schedule set per step, T^2 KL (batchmean) + CE, the last
    partial batch dropped; so only the speed differs between rows, not the optimisation."""
    from kdtrain.distill.train import lr_factor

    T, alpha, lr = cfg.kd.temperature, cfg.kd.alpha, cfg.train.lr
    tensors = [ds.x_train, ds.y_train] + ([predict(teacher, ds.x_train)] if cached else [])
    steps = len(ds.y_train) // batch_size
    total = cfg.train.epochs * steps
    opt = torch.optim.Adam(student.parameters(), lr=lr, fused=fused or None)
    loader = DataLoader(TensorDataset(*tensors), batch_size=batch_size, shuffle=True, drop_last=True)
    gen = torch.Generator().manual_seed(0)
    teacher.eval()
    step = 0
    for _ in range(cfg.train.epochs):
        student.train()
        if resident:
            perm = torch.randperm(len(ds.y_train), generator=gen)
            batches = (tuple(t[perm[i * batch_size : (i + 1) * batch_size]] for t in tensors) for i in range(steps))
        else:
            batches = loader
        for batch in batches:
            x, y = batch[0], batch[1]
            if cached:
                t = batch[2]
            else:
                with torch.no_grad():
                    t = teacher(x)
            for g in opt.param_groups:
                g["lr"] = lr * lr_factor(step, total, cfg.train.schedule)
            s = student(x)
            kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
            loss = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return student


def b1_b2(cfg, ds, pool, repeats: int) -> dict:
    """B1: an ablation from the classic loop to kdtrain's trainer, at batch 64 and 256, the same optimizer,
    schedule and epochs in every row (seconds: median of the repeats, computing the teacher's logits
    included where a row caches them; test accuracy: median); B2: kdtrain's KD trial against its no-teacher
    trial."""
    teacher = pool[cfg.kd_teachers[0]].model
    out, rows = {}, []
    for bs in (64, 256):
        c = config.replace(cfg, {"train.batch_size": bs})
        for name, cached, resident, fused in (*ABLATION, ("kdtrain trainer", True, True, True)):
            seconds, accs = [], []
            for rep in range(repeats):
                seed_all(rep)
                student = models.from_config(cfg.student, ds.input_shape, ds.num_classes)
                t0 = time.perf_counter()
                if name == "kdtrain trainer":
                    predict(teacher, ds.x_train)  # kdtrain pays for the teacher's logits once per study: count it
                    acc = distill_student(config.replace(c, {"train.seed": rep}), ds, pool).test_accuracy
                    seconds.append(time.perf_counter() - t0)
                else:
                    ablation_loop(teacher, student, ds, c, bs, cached, resident, fused)
                    seconds.append(time.perf_counter() - t0)
                    acc = accuracy(student, ds.x_test, ds.y_test)
                accs.append(acc)
            rows.append(
                {
                    "batch_size": bs,
                    "row": name,
                    "seconds": statistics.median(seconds),
                    "test_accuracy": statistics.median(accs),
                    "test_accuracies": accs,
                }
            )
            print(
                f"  B1 batch {bs:3d} {name:28s} {rows[-1]['seconds']:6.2f} s  acc {rows[-1]['test_accuracy']:.4f}",
                flush=True,
            )
    for bs in (64, 256):
        classic, ours = (
            next(r for r in rows if r["batch_size"] == bs and r["row"] == n)
            for n in ("classic loop", "kdtrain trainer")
        )
        out[f"b1_speedup_batch{bs}"] = classic["seconds"] / ours["seconds"]
    out["b1_ablation"] = rows
    kd_t, scratch_t = [], []
    for _ in range(repeats):
        for c, bucket in (
            (config.replace(cfg, {"kd.alpha": 0.7}), kd_t),
            (config.replace(cfg, {"kd.alpha": 0.0}), scratch_t),
        ):
            t0 = time.perf_counter()
            distill_student(c, ds, pool)
            bucket.append(time.perf_counter() - t0)
    out["b2_kd_over_scratch"] = statistics.median(kd_t) / statistics.median(scratch_t)
    out["b2_seconds"] = {"kd": statistics.median(kd_t), "scratch": statistics.median(scratch_t)}
    return out


def fixed_trials(cfg, n: int) -> list[dict]:
    """n parameter sets drawn once (seeded): both B3 sweeps run exactly these, so they do the same work."""
    import optuna

    from kdtrain.study.space import suggest

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        t = study.ask()
        suggest(t, cfg.search)
        out.append(t.params)
    return out


def model_logging(cfg, ds, home: Path, repeats: int = 10) -> dict:
    """B4's share of MLflow models: seconds to log one student as an MLflow logged model (trace, check, save,
    upload, link; what every complete trial adds) and its data as dataset inputs, in a fresh SQLite store."""
    from kdtrain.sweep.session import data_inputs
    from kdtrain.tracking.client import Tracker

    tracker = Tracker(f"sqlite:///{home / 'mlflow.db'}")
    exp = tracker.experiment("b4-models")
    model = models.from_config(cfg.student, ds.input_shape, ds.num_classes)
    example = ds.x_val[:2].numpy()
    inputs = data_inputs(tracker, cfg, ds)
    model_s, inputs_s = [], []
    for i in range(repeats + 1):  # the first one warms MLflow's imports up
        run = tracker.start(exp, f"trial-{i}", "student", params={"student.width": cfg.student.width})
        t0 = time.perf_counter()
        tracker.log_inputs(run, inputs)
        t1 = time.perf_counter()
        tracker.log_model(run, exp, f"trial-{i}", model, example)
        t2 = time.perf_counter()
        tracker.end(run)
        if i:
            inputs_s.append(t1 - t0)
            model_s.append(t2 - t1)
    return {"b4_log_model_s": statistics.median(model_s), "b4_log_inputs_s": statistics.median(inputs_s)}


def sweep_run(sweep: Path, workers: int, trials: int, home: Path, teacher_cache: Path, params: list[dict]) -> dict:
    """One sweep in a fresh store with the teachers already cached and the trials' parameters fixed in advance:
    wall time of the trials, peak RSS."""
    import optuna

    from kdtrain.study.search import open_storage

    (home / "cache").mkdir(parents=True)
    shutil.copytree(teacher_cache, home / "cache" / "teachers")
    env = {**os.environ, "KDTRAIN_HOME": str(home)}
    env.pop("MLFLOW_TRACKING_URI", None)
    # no pruning: both sweeps must do the same work (which trials the pareto rule prunes depends on which
    # trials finished first, and so on the number of workers)
    cmd = [
        sys.executable,
        "-m",
        "kdtrain.cli",
        "sweep",
        str(sweep),
        "--trials",
        str(trials),
        "--workers",
        str(workers),
        "--set",
        "study.pruner=none",
        "--no-report",
    ]
    name = "bench" if "bench" in sweep.read_text() else config.load(sweep).study.name
    # create the study (its base-settings trial comes first), then queue the same parameters for every run
    create = list(cmd)
    create[cmd.index("--workers") + 1] = "0"
    r = subprocess.run(create, env=env, capture_output=True, text=True, cwd=home)
    if r.returncode != 0:
        raise SystemExit(f"sweep --workers 0 failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    study = optuna.load_study(study_name=name, storage=open_storage(str(home / "optuna.journal")))
    for p in params:
        study.enqueue_trial(p, skip_if_exists=False)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0, t0_wall = time.perf_counter(), time.time()
    log = home / "sweep.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True, cwd=home)
        total_peak = 0.0
        while proc.poll() is None:  # the sweep's processes together: the sweep and its workers
            total_peak = max(total_peak, tree_rss_mb(proc.pid))
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"sweep failed:\n{log.read_text()[-4000:]}")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    from kdtrain.tracking.client import Tracker

    df, _ = Tracker(f"sqlite:///{home / 'mlflow.db'}").runs_frame(name)
    students = df[df["tag:kdtrain.role"] == "student"]
    baselines = df[df["tag:kdtrain.role"] == "baseline"]
    # trial phase: from the first trial run's start to the last one's end (excludes start-up and teacher loading)
    started = datetime.datetime.fromtimestamp(t0_wall, tz=datetime.timezone.utc)
    start = students["start_time"].min()
    end = max(students["end_time"].max(), baselines["end_time"].max() if len(baselines) else students["end_time"].max())
    phase = (end - start).total_seconds()
    train_s = float(students["train_seconds"].sum() + baselines["train_seconds"].sum())
    return {
        "wall_s": wall,
        "trial_phase_s": phase,
        "startup_s": (start - started).total_seconds(),
        "train_s": train_s,
        "trials": len(students),
        "peak_rss_mb": max(peak_kb, before) / 1024,
        "total_rss_mb": total_peak,
    }


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants now (Linux /proc), in MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def b6_sweep(sweep: Path, home: Path, cache: Path | None, trials: int, seed: int, pruner: str) -> dict:
    """One quickstart study in a fresh store (caches copied in): its hypervolume history and trial curves."""
    from kdtrain import pareto
    from kdtrain.study import search
    from kdtrain.study.progress import hv_history

    wall_file = home / "b6_wall_s"
    if wall_file.exists():  # finished by an earlier, interrupted B6 (--b6-work): read it, do not rerun it
        wall = float(wall_file.read_text())
    else:
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        if cache is not None:
            shutil.copytree(cache, home / "cache")
        env = {**os.environ, "KDTRAIN_HOME": str(home)}
        env.pop("MLFLOW_TRACKING_URI", None)
        cmd = [
            sys.executable,
            "-m",
            "kdtrain.cli",
            "sweep",
            str(sweep),
            "--trials",
            str(trials),
            "--no-report",
            "--set",
            f"study.seed={seed}",
            "--set",
            f"study.pruner={pruner}",
            "--set",
            "train.threads=1",
        ]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=home)
        if r.returncode != 0:
            raise SystemExit(f"B6 sweep failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
        wall = time.perf_counter() - t0
        wall_file.write_text(str(wall))
    cfg = config.load(sweep)
    study = search.load(cfg.study.name, str(home / "optuna.journal"))
    done = search.trials(study, "COMPLETE", "PRUNED")
    complete = [t for t in done if t.state.name == "COMPLETE"]
    costs = lambda t: {m: t.user_attrs[m] for m in cfg.study.objectives if m in pareto.COSTS}  # noqa: E731
    return {
        "pruner": pruner,
        "seed": seed,
        "wall_s": wall,
        "hv": hv_history(study, cfg.study.objectives),
        "pruned": sum(t.state.name == "PRUNED" for t in done),
        "complete": [
            {"number": t.number, "values": list(t.values), "costs": costs(t), "curve": t.user_attrs[search.T_CURVE]}
            for t in complete
        ],
        "warmup": cfg.study.prune_warmup(cfg.train.epochs),
        "margin": cfg.study.prune_margin,
        "objectives": cfg.study.objectives,
    }


def replay_lost(run: dict) -> tuple[int, int]:
    """(trials the pareto rule would have pruned, of which on the final front) in an unpruned run: each trial
    checked at every epoch against the trials that finished before it."""
    from kdtrain import pareto
    from kdtrain.pareto import front_mask as pareto_mask

    trials, objectives = run["complete"], run["objectives"]
    front = pareto_mask([t["values"] for t in trials], list(objectives.values())) if trials else []
    would = lost = 0
    for i, t in enumerate(trials):
        before = [pareto.Course(f["number"], f["costs"], f["curve"]) for f in trials[:i]]
        if any(
            pareto.dominated_by(t["costs"], t["curve"][:e], before, objectives, run["margin"], run["warmup"])
            for e in range(1, len(t["curve"]) + 1)
        ):
            would += 1
            lost += bool(front[i])
    return would, lost


def compute_to(hv: list, target: float) -> float:
    """Training seconds at which the hypervolume first reaches target (inf if never)."""
    return next((c for c, h in hv if h >= target - 1e-12), float("inf"))


def b6(sweep: Path, work: Path, trials: int, seeds: list[int]) -> dict:
    runs = []
    cache = work / "home" / "cache"  # the teachers main() trained; the first run adds baselines and latencies
    for seed in seeds:
        for pruner in ("none", "pareto"):
            home = work / f"b6-{pruner}-{seed}"
            print(f"  B6: seed {seed}, pruner {pruner}...", flush=True)
            runs.append(b6_sweep(sweep, home, cache, trials, seed, pruner))
            cache = home / "cache"
    per_seed = []
    for seed in seeds:
        u, p = (next(r for r in runs if r["seed"] == seed and r["pruner"] == k) for k in ("none", "pareto"))
        target = 0.95 * u["hv"][-1][1]
        cu, cp = compute_to(u["hv"], target), compute_to(p["hv"], target)
        would, lost = replay_lost(u)
        per_seed.append(
            {
                "seed": seed,
                "compute_to_95_unpruned_s": cu,
                "compute_to_95_pruned_s": cp,
                "compute_ratio": cu / cp,
                "final_hv_unpruned": u["hv"][-1][1],
                "final_hv_pruned": p["hv"][-1][1],
                "final_hv_ratio": p["hv"][-1][1] / u["hv"][-1][1],
                "total_compute_unpruned_s": u["hv"][-1][0],
                "total_compute_pruned_s": p["hv"][-1][0],
                "pruned_trials": p["pruned"],
                "replay_would_prune": would,
                "replay_front_lost": lost,
                "wall_s": {"unpruned": u["wall_s"], "pruned": p["wall_s"]},
            }
        )
    return {
        "b6_compute_ratio": statistics.fmean(s["compute_ratio"] for s in per_seed),
        "b6_final_hv_ratio": statistics.fmean(s["final_hv_ratio"] for s in per_seed),
        "b6_front_trials_lost": sum(s["replay_front_lost"] for s in per_seed),
        "b6_trials": trials,
        "b6_per_seed": per_seed,
        "b6_runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--quick", action="store_true", help="tiny versions, to keep the script working")
    ap.add_argument("--trials", type=int, default=12, help="trials per sweep for B3/B4")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--only",
        default="b1,b2,b3,b4,b5,b6",
        help="comma-separated benchmarks (b1 and b2 run together, as do b3, b4 and b5)",
    )
    ap.add_argument("--b6-trials", type=int, default=None, help="trials per B6 study (default: the sweep file's)")
    ap.add_argument(
        "--b6-work",
        help="B6's folder, kept: studies it finished before are read, not rerun (resumes an interrupted B6)",
    )
    args = ap.parse_args()
    only = {b.strip().lower() for b in args.only.split(",") if b.strip()}
    unknown = only - {"b1", "b2", "b3", "b4", "b5", "b6"}
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))} (known: b1 ... b6)")
    torch.set_num_threads(1)

    work = Path(tempfile.mkdtemp(prefix="kdtrain-bench-"))
    os.environ["KDTRAIN_HOME"] = str(work / "home")
    if args.quick:
        sweep = work / "quick.yaml"
        sweep.write_text(QUICK_SWEEP)
        trials, repeats, b6_seeds = 2, 1, [0]
    else:
        sweep, trials, repeats, b6_seeds = ROOT / "sweeps" / "quickstart.yaml", args.trials, args.repeats, [0, 1, 2]
    cfg = config.load(sweep, ["train.threads=1"])
    ds = datasets.load(cfg.data)
    print(f"teachers for {sweep.name} (trained once, cached)...", flush=True)
    pool = load_pool(cfg, ds, log=lambda s: None)
    results = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, "
        f"torch {torch.__version__}",
        "sweep": sweep.name,
        "epochs": cfg.train.epochs,
        "student": f"{cfg.student.arch} width {cfg.student.width}",
    }
    targets = {}
    if only & {"b1", "b2"}:
        print("B1/B2: loops...", flush=True)
        results.update(b1_b2(cfg, ds, pool, repeats))
        targets.update(
            {"b1_speedup_batch64": (">=", 3), "b1_speedup_batch256": ("info", None), "b2_kd_over_scratch": ("<=", 1.3)}
        )
    if only & {"b3", "b4", "b5"}:
        print("B3/B4/B5: sweeps with 1 and 2 workers...", flush=True)
        cache = work / "home" / "cache" / "teachers"
        params = fixed_trials(cfg, trials - 1)  # the first trial is the sweep file's base settings
        one = sweep_run(sweep, 1, trials, work / "w1", cache, params)
        two = sweep_run(sweep, 2, trials, work / "w2", cache, params)
        results["b3_trials_per_min"] = {
            "1_worker": 60 * one["trials"] / one["trial_phase_s"],
            "2_workers": 60 * two["trials"] / two["trial_phase_s"],
        }
        results["b3_speedup_2_workers"] = (
            results["b3_trials_per_min"]["2_workers"] / results["b3_trials_per_min"]["1_worker"]
        )
        # steady state: from the first trial's start to the last run's end; wall: the whole command,
        # start-up (imports, stores, teacher pool, parent run) included
        results["b3_speedup_2_workers_wall"] = one["wall_s"] / two["wall_s"]
        results["b4_overhead_s_per_trial"] = (one["trial_phase_s"] - one["train_s"]) / one["trials"]
        results["b4_overhead_s_per_trial_wall"] = (one["wall_s"] - one["train_s"]) / one["trials"]
        results["startup_s"] = {"1_worker": one["startup_s"], "2_workers": two["startup_s"]}
        results.update(model_logging(cfg, ds, work / "models", repeats=2 if args.quick else 10))  # part of b4
        results["b5_peak_rss_mb"] = max(one["peak_rss_mb"], two["peak_rss_mb"])
        results["b5_total_rss_mb"] = max(one["total_rss_mb"], two["total_rss_mb"])
        results["sweeps"] = {"1_worker": one, "2_workers": two}
        targets.update(
            {
                "b3_speedup_2_workers": (">=", 1.7),
                "b3_speedup_2_workers_wall": ("info", None),
                "b4_overhead_s_per_trial": ("<=", 0.5),
                "b4_overhead_s_per_trial_wall": ("info", None),
                "b4_log_model_s": ("info", None),
                "b4_log_inputs_s": ("info", None),
                "b5_peak_rss_mb": ("<=", 1536),
                "b5_total_rss_mb": ("info", None),
            }
        )
    if "b6" in only:
        print("B6: pareto pruning against none...", flush=True)
        b6_trials = args.b6_trials or (4 if args.quick else cfg.study.trials)
        results.update(b6(sweep, Path(args.b6_work) if args.b6_work else work, b6_trials, b6_seeds))
        targets.update(
            {"b6_compute_ratio": (">=", 1.5), "b6_final_hv_ratio": (">=", 0.98), "b6_front_trials_lost": ("<=", 0)}
        )
    shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'benchmark':28s} {'value':>10s}  target   met")
    for key, (op, bound) in targets.items():
        v = results[key]
        if op == "info":
            print(f"{key:28s} {v:10.3f}  (no target)")
            continue
        ok = v >= bound if op == ">=" else v <= bound
        print(f"{key:28s} {v:10.3f}  {op} {bound:<5} {'yes' if ok else 'NO'}")
    for s in results.get("b6_per_seed", []):
        print(
            f"  b6 seed {s['seed']}: to 95% {s['compute_to_95_unpruned_s']:.0f} s unpruned / "
            f"{s['compute_to_95_pruned_s']:.0f} s pruned; final hv {s['final_hv_unpruned']:.4f} / "
            f"{s['final_hv_pruned']:.4f}; {s['pruned_trials']} pruned; replay: {s['replay_would_prune']} would be "
            f"pruned, {s['replay_front_lost']} of the front"
        )
    print(f"machine: {results['machine']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
