"""Multi-objective studies: the Pareto pruner's rule and the hypervolume (plain Python; no Optuna, no MLflow).

kdtrain's two-objective studies trade accuracy against a cost (params, size_bytes, flops, latency,
throughput). A trial's cost is known before its first epoch (it depends only on the architecture), so only
its accuracy is uncertain while it trains. The rule (README, "Pruning multi-objective studies"): after the
warm-up, a trial is pruned at epoch e when a finished trial that is at least as cheap on every cost objective
was, at that same epoch e, more accurate than the best this trial has reached so far, by the margin, and
also ended more accurate than that by the margin. The trial is then on course to be dominated by a trial
that exists already. A trial cheaper than every finished one is never pruned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

ACCURACY = "val_accuracy"
COSTS = ("params", "size_bytes", "flops", "latency_ms_p50", "latency_ms_p95", "throughput")
"""Metrics known before training (the architecture's); all but throughput are better when lower."""


def prunable(objectives: dict) -> bool:
    """Whether the pareto pruner applies: val_accuracy maximised plus one or more cost objectives."""
    others = [m for m in objectives if m != ACCURACY]
    return objectives.get(ACCURACY) == "maximize" and bool(others) and all(m in COSTS for m in others)


@dataclass(frozen=True)
class Course:
    """A finished trial as the rule sees it: its number, cost values and validation accuracy per epoch."""

    number: int
    costs: dict
    curve: Sequence[float]


def as_cheap(a: dict, b: dict, objectives: dict) -> bool:
    """Whether costs a are at least as good as costs b on every cost objective (ties count)."""
    return all((a[m] >= b[m]) if objectives[m] == "maximize" else (a[m] <= b[m]) for m in objectives if m in COSTS)


def dominated_by(costs: dict, curve: Sequence[float], finished: Iterable[Course], objectives: dict,
                 margin: float, warmup: int) -> tuple[Course, float] | None:
    """The finished trial that the running trial (its costs and its accuracy per epoch so far) is on course to be
    dominated by, with the accuracy lead it had at this epoch; None to keep training (always during the
    warm-up: epochs <= warmup). Only finished trials trained for at least as many epochs are compared."""
    epoch = len(curve)
    if epoch <= warmup:
        return None
    best = max(curve)
    hits = [(f, f.curve[epoch - 1] - best) for f in finished
            if len(f.curve) >= epoch and as_cheap(f.costs, costs, objectives)
            and f.curve[epoch - 1] >= best + margin and f.curve[-1] >= best + margin]
    return max(hits, key=lambda h: h[1]) if hits else None


# --------------------------------------------------------------------------- hypervolume


def to_minimize(values: Sequence[float], directions: Sequence[str]) -> list[float]:
    return [-v if d == "maximize" else v for v, d in zip(values, directions)]


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by points (all objectives minimised) up to the reference point, by slicing
    along the last objective: O(n^d), ample for the tens to hundreds of trials of a study. Points that do not
    strictly beat the reference on every objective add nothing."""
    pts = [list(p) for p in points if all(x < r for x, r in zip(p, reference))]
    if not pts:
        return 0.0
    if len(reference) == 1:
        return reference[0] - min(p[0] for p in pts)
    pts.sort(key=lambda p: p[-1])
    total = 0.0
    for i, p in enumerate(pts):
        upper = pts[i + 1][-1] if i + 1 < len(pts) else reference[-1]
        if upper > p[-1]:
            total += (upper - p[-1]) * hypervolume([q[:-1] for q in pts[: i + 1]], reference[:-1])
    return total


def study_hypervolume(values: Iterable[Sequence[float]], directions: Sequence[str],
                      reference: Sequence[float]) -> float:
    """Hypervolume of objective values as a study records them (in its directions), scaled so that each cost
    objective's reference is 1 and accuracy stays in [0, 1]: the fraction of the box between the reference
    point and the ideal (accuracy 1, cost 0) that the trials dominate."""
    scale = [abs(r) if r and math.isfinite(r) else 1.0 for r in reference]
    pts = [to_minimize([v / s for v, s in zip(vals, scale)], directions) for vals in values]
    return hypervolume(pts, to_minimize([r / s for r, s in zip(reference, scale)], directions))


def reference_point(objectives: dict, worst_costs: dict) -> list[float]:
    """The study's fixed reference: accuracy 0 (and throughput 0); each cost minimised at 1.1 times its value
    for the costliest student the search space can propose, so that every trial can add volume."""
    return [0.0 if d == "maximize" else 1.1 * float(worst_costs[m]) for m, d in objectives.items()]


def history(finished: Iterable[tuple[float, Sequence[float] | None]], directions: Sequence[str],
            reference: Sequence[float]) -> list[tuple[float, float]]:
    """(compute seconds so far, hypervolume) after each finished trial, in the order they finished; a trial
    that was pruned or has no values adds its compute and no point."""
    out, points, compute = [], [], 0.0
    for seconds, values in finished:
        compute += seconds or 0.0
        if values is not None:
            points.append(values)
        out.append((compute, study_hypervolume(points, directions, reference)))
    return out
