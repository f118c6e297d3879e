"""Is latency repeatable? Profile the same models in N fresh processes and compare p50.

    python benchmarks/profile_repeat.py [--runs 2] [--backend eager|onnxruntime]

Prints each process's p50/p95/cv per model and the largest relative p50
difference between processes (the target: within 10%).
"""

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, torch
from kdtrain.config import ProfileConfig
from kdtrain.distill.models import create_model
from kdtrain.deploy.profile import latency
backend = sys.argv[1]
out = {}
for arch, width in [("cnn1d", 64), ("gru", 48), ("cnn1d", 8), ("mlp", 32)]:
    torch.manual_seed(0)
    m = create_model(arch, (1, 40), 10, width)
    r = latency(m, (1, 40), ProfileConfig(backend=backend))
    out[f"{arch}-w{width}"] = {k: r[k] for k in ("latency_ms_p50", "latency_ms_p95", "latency_cv", "throughput")}
print(json.dumps(out))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--backend", default="eager")
    args = ap.parse_args()
    runs = [
        json.loads(
            subprocess.run([sys.executable, "-c", CHILD, args.backend], capture_output=True, text=True, check=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        for _ in range(args.runs)
    ]
    worst = 0.0
    for model in runs[0]:
        p50 = [r[model]["latency_ms_p50"] for r in runs]
        diff = (max(p50) - min(p50)) / min(p50)
        worst = max(worst, diff)
        cells = "  ".join(
            f"p50 {r[model]['latency_ms_p50']:.4f} ms (cv {r[model]['latency_cv']:.1%}, "
            f"{r[model]['throughput']:,.0f}/s @256)"
            for r in runs
        )
        print(f"{model:12s} {cells}  diff {diff:.1%}")
    print(json.dumps({"backend": args.backend, "runs": args.runs, "max_p50_rel_diff": worst}))


if __name__ == "__main__":
    main()
