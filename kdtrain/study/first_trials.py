"""The first trials of a study, before the sampler draws on its own: the student sizes study.spread asks for,
and the teacher subsets a trial may draw while some teachers are still untrained (kdtrain.sweep.worker's Context.need
trains them when a trial first needs them). Each returns the params to fix in the next trial and why (its
kdtrain.reference), for recovery.next_trial."""

from __future__ import annotations

import random

from kdtrain.distill import teachers
from kdtrain.study import search, space

STEERED = "drawn among the teachers trained so far"
"""kdtrain.reference of a trial whose kd.teachers steer() fixed."""


SPREAD = "a size of the base settings spread across the searched range"
"""kdtrain.reference of a trial whose student size study.spread fixed."""


def steer(ctx) -> tuple[dict, str] | None:
    """The next trial's fixed params and why: the sizes study.spread asks for (space.spread_points; the base
    settings at each), then the teachers steer_teachers fixes; None when the sampler draws it all."""
    points = space.spread_points(ctx.cfg, search.target(ctx.study, ctx.cfg))
    if points:
        drawn = search.trials(ctx.study, "COMPLETE", "PRUNED", "RUNNING", "WAITING", "FAIL")
        taken = [
            {k: _params(t).get(k) for k in points[0]} for t in drawn if t.user_attrs.get(search.T_REFERENCE) == SPREAD
        ]
        left = [p for p in points if p not in taken]
        if left:
            return {**space.base_params(ctx.cfg), **left[0]}, SPREAD
    return steer_teachers(ctx)


def steer_teachers(ctx) -> tuple[dict, str] | None:
    """While teachers are still untrained (first_teachers), the first study.trials // 2 trials (at most 10, TPE's
    random start-up) draw kd.teachers among the subsets of the teachers that are ready; the sampler draws every
    other parameter as usual. Then the rest train when a trial first needs them, and each subset the start-up
    could not draw is given to one trial, so that the sampler has seen every subset before it models them.
    (fixed params for the next trial, why); None when nothing needs steering."""
    spec = ctx.cfg.search.get("kd.teachers")
    if not spec or spec["type"] != "subset":
        return None
    ready = set(ctx.pool) | {t.name for t in ctx.cfg.teachers if teachers.is_cached(t, ctx.cfg)}
    done = search.counts(ctx.study)["DONE"]
    if done < min(10, search.target(ctx.study, ctx.cfg) // 2) and not set(spec["of"]) <= ready:
        choices = [s for s in space.subsets(spec["of"]) if set(s.split("+")) <= ready]
        return (
            ({"kd.teachers": random.Random(f"{ctx.cfg.study.seed}-{done}").choice(choices)}, STEERED)
            if choices
            else None
        )
    drawn = search.trials(ctx.study, "COMPLETE", "PRUNED", "RUNNING", "WAITING")
    if not any(t.user_attrs.get(search.T_REFERENCE) == STEERED for t in drawn):
        return None  # every teacher was ready from the start: the sampler's own start-up covers the subsets
    seen = {_params(t).get("kd.teachers") for t in drawn}
    unseen = [s for s in space.subsets(spec["of"]) if s not in seen]
    return ({"kd.teachers": unseen[0]}, "a teachers subset the start-up could not draw") if unseen else None


def _params(t) -> dict:
    """A trial's params, or the ones it was queued with while it has not suggested them yet (WAITING, or RUNNING
    on another worker that has asked it but not yet reached its suggestions)."""
    return t.params or t.system_attrs.get("fixed_params", {})
