"""Multi-objective studies: the Pareto pruner's rule and the hypervolume (plain Python; no Optuna, no MLflow).

kdtrain's two-objective studies trade accuracy against a cost (params, size_bytes, flops, latency,
throughput). A trial's cost is known before its first epoch (it depends only on the architecture), so only
its accuracy is uncertain while it trains. The rule (README, "Pruning multi-objective studies"): after the
warm-up, a trial is pruned at epoch e when a finished trial that is at least as cheap on every cost objective
(a rival) was, at that same epoch, more accurate than the best this trial has reached so far by the margin,
and ended more accurate than that best plus the largest late gain any finished trial made from epoch e to its
end, plus the margin. Even improving as much as the best late bloomer seen so far, the trial would end
dominated by a trial that exists already. A trial cheaper than every finished one is never pruned.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

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


def dominated_by(
    costs: dict, curve: Sequence[float], finished: Iterable[Course], objectives: dict, margin: float, warmup: int
) -> tuple[Course, float] | None:
    """The finished trial that the running trial (its costs and its accuracy per epoch so far) is on course to be
    dominated by, with the accuracy lead it had at this epoch; None to keep training (always during the
    warm-up: epochs <= warmup). Only finished trials trained for at least as many epochs are compared."""
    epoch = len(curve)
    if epoch <= warmup:
        return None
    best = max(curve)
    same = [f for f in finished if len(f.curve) >= epoch]
    late = max((f.curve[-1] - max(f.curve[:epoch]) for f in same), default=0.0)
    hits = [
        (f, f.curve[epoch - 1] - best)
        for f in same
        if as_cheap(f.costs, costs, objectives)
        and f.curve[epoch - 1] >= best + margin
        and f.curve[-1] >= best + max(late, 0.0) + margin
    ]
    return max(hits, key=lambda h: h[1]) if hits else None


# --------------------------------------------------------------------------- hypervolume


def hypervolume(points: Iterable[Sequence[float]], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by points (all objectives minimised) up to the reference point, by slicing
    along the last objective: O(n^d), ample for the tens to hundreds of trials of a study. Points that do not
    strictly beat the reference on every objective add nothing."""
    pts = [list(p) for p in points if all(x < r for x, r in zip(p, reference, strict=False))]
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


def box(objectives: dict, cheapest: dict, costliest: dict) -> dict:
    """The study's fixed box for the hypervolume: per objective its ideal and reference value and its scale.
    Accuracy runs linearly from 1 (ideal) to 0 (reference); each cost runs on a log scale from just below the
    cheapest student the search space can propose to just above the costliest (1.1x either way; throughput,
    higher being cheaper, the other way round), so that every trial can add volume and a front is judged
    across the whole range of sizes, not only near the largest ones."""
    ideal, reference, log = [], [], []
    for m, d in objectives.items():
        if m in COSTS:
            lo, hi = float(cheapest[m]), float(costliest[m])
            ideal.append(lo * 1.1 if d == "maximize" else lo / 1.1)
            reference.append(hi / 1.1 if d == "maximize" else hi * 1.1)
            log.append(True)
        else:
            ideal.append(1.0 if d == "maximize" else 0.0)
            reference.append(0.0 if d == "maximize" else 1.0)
            log.append(False)
    return {"ideal": ideal, "reference": reference, "log": log}


def normalize(values: Sequence[float], hv_box: dict) -> list[float]:
    """Objective values as distances from the ideal (0) towards the reference (1), clipped at 0 below."""
    out = []
    for v, i, r, log in zip(values, hv_box["ideal"], hv_box["reference"], hv_box["log"], strict=False):
        x = math.log(max(v, 1e-300) / i) / math.log(r / i) if log else (v - i) / (r - i)
        out.append(max(x, 0.0))
    return out


def study_hypervolume(values: Iterable[Sequence[float]], hv_box: dict) -> float:
    """Hypervolume of objective values as a study records them: the fraction of the unit box between the ideal
    and the reference point (see box) that they dominate."""
    return hypervolume([normalize(v, hv_box) for v in values], [1.0] * len(hv_box["ideal"]))


def history(finished: Iterable[tuple[float, Sequence[float] | None]], hv_box: dict) -> list[tuple[float, float]]:
    """(compute seconds so far, hypervolume) after each finished trial, in the order they finished; a trial
    that was pruned or has no values adds its compute and no point."""
    out, points, compute = [], [], 0.0
    for seconds, values in finished:
        compute += seconds or 0.0
        if values is not None:
            points.append(values)
        # adding a point never shrinks a hypervolume; max() only drops the last bits of rounding that a
        # different slicing order leaves
        out.append((compute, max(study_hypervolume(points, hv_box), out[-1][1] if out else 0.0)))
    return out


def constraint_metric(key: str) -> str:
    """The metric a constraint bounds: max_<metric> and min_<metric>; max_latency_ms is latency_ms_p50."""
    return "latency_ms_p50" if key == "max_latency_ms" else key[4:]


def constraint_values(constraints: dict, metrics: dict) -> dict[str, float]:
    """<= 0 when satisfied: metric - bound for max_<metric> (max_latency_ms is latency_ms_p50), bound - metric for
    min_<metric>. What the worker gives Optuna (trial.set_constraint) and what the report tests."""
    out = {}
    for key, bound in constraints.items():
        metric = constraint_metric(key)
        out[key] = (
            float(metrics[metric]) - float(bound) if key.startswith("max_") else float(bound) - float(metrics[metric])
        )
    return out


def feasible(constraints: dict, metrics: dict) -> bool:
    """Whether a trial with these metrics meets every constraint: the one definition of the front's members that
    Optuna (best_trials), status, export, register, confirm and the report share."""
    return all(v <= 0 for v in constraint_values(constraints, metrics).values())


def front_mask(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """True for the non-dominated rows of values (n rows of k objectives), for any directions.

    Row j dominates row i when it is at least as good in every objective and strictly better in one; duplicates
    do not dominate each other, so they are all on the front."""
    signs = [-1.0 if d == "maximize" else 1.0 for d in directions]
    rows = [[s * float(x) for s, x in zip(signs, row, strict=False)] for row in values]  # every objective now minimised
    return [
        not any(
            all(b <= a for a, b in zip(ri, rj, strict=False)) and any(b < a for a, b in zip(ri, rj, strict=False))
            for rj in rows
        )
        for ri in rows
    ]
