"""The eight-trial sweep several README claims are checked against (gains over the seeded baseline, progress
lines in a log, max_latency_ms constraints, export), built once per pytest worker by conftest's sweep8."""

from pathlib import Path

from support.sweeps import run_cli, write_sweep

TRIALS = 8
LATENCY_BOUND = 0.001  # ms: no batch-1 call of any model takes a microsecond, so every trial violates it
PARAMS_BOUND = 150


def build(root: Path):
    """`kdtrain sweep` (one worker, output to a pipe, as under nohup): 8 trials, every one completes (pruner none),
    2 baseline seeds per width, a max_latency_ms and a max_params constraint; long enough (3000 samples, 30 epochs)
    for several progress lines. (home, the sweep's CompletedProcess, env, sweep file)."""
    home = root / "home"
    env = {"KDTRAIN_HOME": str(home), "KDTRAIN_DATA": str(root / "data")}
    p = write_sweep(
        root,
        **{
            "trials: 3}": f"trials: {TRIALS}, baseline_seeds: 2, pruner: none, seed: 3, constraints: "
            f"{{max_latency_ms: {LATENCY_BOUND}, max_params: {PARAMS_BOUND}}}}}",
            "size: 400": "size: 3000",
            "epochs: 4,": "epochs: 30,",
        },
    )
    r = run_cli("sweep", p, "--no-report", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return home, r, env, p
