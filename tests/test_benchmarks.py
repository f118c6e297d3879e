import json
import subprocess
import sys

from conftest import ROOT

KEYS = ("b1_speedup_batch64", "b1_speedup_default", "b1_accuracy", "b2_kd_over_scratch", "b3_speedup_2_workers",
        "b4_overhead_s_per_trial", "b5_peak_rss_mb")


def test_benchmark_quick_mode_runs_and_writes_every_key(tmp_path):
    """Keeps benchmarks/run.py working; its quick numbers are not checked (speed goals live in benchmarks/)."""
    out = tmp_path / "b.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    res = json.loads(out.read_text())
    for k in KEYS:
        assert k in res, k
    assert set(res["b1_accuracy"]) == {"classic", "kdtrain"}
    assert res["sweeps"]["1_worker"]["trials"] == 2 and res["sweeps"]["2_workers"]["trials"] == 2
    assert "b3_speedup_2_workers" in r.stdout
