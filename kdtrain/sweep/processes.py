"""Local worker processes: `kdtrain sweep --workers` starts them (shared.plan_workers says how many, with how many
threads and which GPU each), each a `kdtrain worker` of the same study."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

from kdtrain.errors import Terminated


def local_gpus() -> list[str]:
    """This machine's CUDA devices this process may use, as CUDA_VISIBLE_DEVICES names ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(n)]
    return names[:n]


def spawn(
    study_name: str,
    envs: list[dict],
    threads: int,
    storage_url: str,
    tracking_uri: str,
    deadline: float | None,
    logs: Path,
    first_index: int = 0,
) -> list[tuple[subprocess.Popen, Path]]:
    """One `kdtrain worker` process on this machine per environment in envs (shared.plan_workers), numbered from
    first_index, each logging to logs/<study>-worker<i>.log. The stores travel in the environment, not on the
    command line where ps would show a password."""
    logs.mkdir(parents=True, exist_ok=True)
    procs = []
    for i, extra in enumerate(envs, start=first_index):
        env = {**os.environ, "KDTRAIN_STORAGE": storage_url, "MLFLOW_TRACKING_URI": tracking_uri, **extra}
        cmd = [
            sys.executable,
            "-m",
            "kdtrain.cli",
            "worker",
            "--study",
            study_name,
            "--threads",
            str(threads),
            "--worker-index",
            str(i),
        ] + (["--deadline", str(deadline)] if deadline else [])
        log = logs / f"{study_name}-worker{i}.log"
        with open(log, "a") as fh:  # the child keeps its own copy of the descriptor
            procs.append((subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env), log))
    return procs


def run_local(
    ctx, storage: str, trials: int, threads: int, envs: list[dict], deadline: float | None, logs: Path
) -> tuple[list[Path], bool]:
    """`kdtrain sweep`'s workers: this process (its context ctx) as the first, one `kdtrain worker` process per
    further environment of envs (shared.plan_workers); progress meanwhile. (logs of failed workers, interrupted)"""
    from kdtrain.sweep import worker
    from kdtrain.sweep.console import SweepProgress

    progress = SweepProgress(ctx.study.study_name, storage, trials, ctx.cfg.study.objectives)
    procs = []
    try:
        gpus = (
            f", GPUs {','.join(e['CUDA_VISIBLE_DEVICES'] for e in envs)}" if "CUDA_VISIBLE_DEVICES" in envs[0] else ""
        )
        print(
            f"{len(envs)} worker(s), {threads} CPU thread(s) each{gpus}"
            + (f"; this process and {len(envs) - 1} more, logs in {logs}" if len(envs) > 1 else "")
        )
        procs = spawn(ctx.study.study_name, envs[1:], threads, storage, ctx.tracker.uri, deadline, logs, first_index=1)
        with progress.live():
            worker.work(ctx, deadline)
            while any(p.poll() is None for p, _ in procs):
                time.sleep(1)
    except KeyboardInterrupt as e:
        for p, _ in procs:  # each worker got the Ctrl-C too (SIGTERM: sent on): let it fail and re-queue its trial
            with contextlib.suppress(Exception):
                if isinstance(e, Terminated):
                    p.terminate()
                p.wait(timeout=60)
        return [], True
    finally:
        progress.update(final=True)
    return [log for p, log in procs if p.returncode not in (0, None)], False
