"""Helpers of the integration tests that run workers: the tiny sweep with short profiling, and a tracking
server's runs."""

import textwrap
from pathlib import Path

from support.sweeps import TINY_SEARCH, TINY_SWEEP


def sweep_file(folder: Path, trials: int, size: int = 400, epochs: int = 4, pruner: str = "none") -> Path:
    """The tiny sweep for these tests; pruning off by default, as a killed trial must be retried, not pruned."""
    text = textwrap.dedent(TINY_SWEEP) + textwrap.dedent(TINY_SEARCH)
    text = text.replace(
        "study: {name: tiny}",
        "study: {name: tiny, objectives: {val_accuracy: maximize, "
        f"params: minimize}}, trials: {trials}, pruner: {pruner}}}",
    )
    text = text.replace("size: 400", f"size: {size}").replace("epochs: 4,", f"epochs: {epochs},")
    # profiling is not under test here: keep it short
    text += "profile: {blocks: 3, calls: 10, warmup: 5, throughput_batch: 64}\n"
    p = folder / "tiny.yaml"
    p.write_text(text)
    return p


def server_runs(url: str, experiment: str):
    """Every run of an experiment on a tracking server, as mlflow.search_runs gives them."""
    import mlflow

    mlflow.set_tracking_uri(url)
    return mlflow.search_runs(experiment_names=[experiment], max_results=10000)
