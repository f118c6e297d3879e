"""A study's progress in numbers: its hypervolume after each finished trial, against the training seconds spent,
and its time in words (the trials' own training, and their whole time). kdtrain status, the sweep's end and the
report say the same numbers."""

from __future__ import annotations

from kdtrain import pareto


def fmt_seconds(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def hv_history(study, objectives: dict, constraints: dict | None = None) -> list[tuple[float, float]]:
    """(training seconds so far, hypervolume) after each finished trial (COMPLETE or PRUNED) of a
    multi-objective study, in the order they finished; [] before its box exists. A trial that breaks a
    constraint adds its compute but no volume: the front is of feasible trials only."""
    from kdtrain.study import search  # optuna on first use: console's progress lines import this module

    hv_box = study.user_attrs.get(search.A_HV_BOX)
    if hv_box is None or len(objectives) < 2:
        return []
    done = [
        (
            t.user_attrs.get(search.T_COMPUTE, 0.0),
            t.values if t.state.name == "COMPLETE" and search.is_feasible(t, constraints or {}) else None,
        )
        for t in search.trials(study, "COMPLETE", "PRUNED")
    ]
    return pareto.history(done, hv_box)


def time_spent(study) -> str:
    """The study's time, named the same way in kdtrain status and the report: the trials' own training summed,
    and their whole time (measuring, baselines and logging included)."""
    from kdtrain.study import search  # optuna on first use: console's progress lines import this module

    done = search.trials(study, "COMPLETE", "PRUNED", "FAIL")
    train = sum(t.user_attrs.get(search.T_COMPUTE, 0.0) for t in done)
    whole = sum(t.duration.total_seconds() for t in done if t.duration is not None)
    return (
        f"training time {fmt_seconds(train)} (the trials' own, summed; {fmt_seconds(whole)} with measuring, "
        "baselines and logging)"
    )
