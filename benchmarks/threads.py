"""B8: CPU threads against model size, OpenMP's wait policy, and two processes sharing the machine.

    python benchmarks/threads.py [--out FILE.json] [--steps 150]

For each model of the quickstart (cnn1d students of width 2, 8 and 32; the cnn_wide and gru teachers), the time of
one training step (batch 256, Adam, the KD loss against cached soft targets, MNIST-1D-shaped inputs), median of
3 runs, at 1 and 2 threads, with OMP_WAIT_POLICY=ACTIVE (spinning, the runtime's default behaviour) and PASSIVE;
then the same step in two processes started together ("shared": what a second sweep or a test run does to a
sweep), each with 1 or 2 threads. Each measurement is a fresh process (the OpenMP runtime reads its wait policy
once, when torch loads).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {
    "student w2": ("cnn1d", 2),
    "student w8": ("cnn1d", 8),
    "student w32": ("cnn1d", 32),
    "teacher cnn_wide": ("cnn1d", 64),
    "teacher gru": ("gru", 48),
}

CHILD = r"""
import sys, time, torch
sys.path.insert(0, {root!r})
from kdtrain.distill import models
from kdtrain.distill.losses import kd_loss, teacher_targets
from kdtrain.schema import LossConfig
torch.set_num_threads({threads})
torch.manual_seed(0)
m = models.create_model({arch!r}, (1, 40), 10, {width})
opt = torch.optim.Adam(m.parameters(), lr=0.01, fused=True)
x, y = torch.randn(256, 1, 40), torch.randint(0, 10, (256,))
tgt = teacher_targets(torch.randn(1, 256, 10), y, 4.0, "mean_probs", None, LossConfig())
def step():
    loss, _, _ = kd_loss(m(x), y, tgt, 4.0, 0.7, LossConfig(), 1)
    opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
for _ in range(10): step()
t = time.perf_counter()
for _ in range({steps}): step()
print((time.perf_counter() - t) / {steps} * 1000)
"""


def launch(arch: str, width: int, threads: int, policy: str, steps: int) -> subprocess.Popen:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    code = CHILD.format(root=str(ROOT), threads=threads, arch=arch, width=width, steps=steps)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)


def step_ms(arch: str, width: int, threads: int, policy: str, steps: int, together: int = 1) -> float:
    """Median over 3 of the ms per step; with together=2 two processes run at once (their mean)."""
    runs = []
    for _ in range(3):
        procs = [launch(arch, width, threads, policy, steps) for _ in range(together)]
        runs.append(statistics.fmean(float(p.communicate()[0].split()[-1]) for p in procs))
    return statistics.median(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=150)
    a = ap.parse_args()
    out = {"cpus": os.cpu_count(), "rows": []}
    print(
        f"{'model':18s} {'1t active':>10s} {'2t active':>10s} {'1t passive':>10s} {'2t passive':>10s} "
        f"{'2 procs 2t active':>18s} {'2 procs 1t passive':>19s}   (ms per step)"
    )
    for name, (arch, width) in MODELS.items():
        steps = a.steps if width < 32 or arch != "cnn1d" else max(30, a.steps // 3)
        steps = max(20, steps // 5) if arch == "gru" else steps
        row = {"model": name, "steps": steps}
        for threads in (1, 2):
            for policy in ("ACTIVE", "PASSIVE"):
                row[f"{threads}t_{policy.lower()}"] = step_ms(arch, width, threads, policy, steps)
        row["shared_2t_active"] = step_ms(arch, width, 2, "ACTIVE", steps, together=2)
        row["shared_1t_passive"] = step_ms(arch, width, 1, "PASSIVE", steps, together=2)
        out["rows"].append(row)
        print(
            f"{name:18s} {row['1t_active']:10.2f} {row['2t_active']:10.2f} {row['1t_passive']:10.2f} "
            f"{row['2t_passive']:10.2f} {row['shared_2t_active']:18.2f} {row['shared_1t_passive']:19.2f}",
            flush=True,
        )
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
