"""A teacher from a finished study (``teachers[].from_study``): a distilled student becomes the next round's teacher
(born-again networks) without exporting files by hand.

``from_study: STUDY#N`` names trial N of STUDY; ``from_study: STUDY`` the study's confirmed pick (the trial with the
highest mean val accuracy over kdtrain confirm's new seeds, as kdtrain register ranks them). Before anything else
reads the config, ``resolve`` looks the trial up in the Optuna storage, reads its MLflow run's config.yaml and
model.pt (the state dict mlflow.pyfunc's logged model was exported from), keeps model.pt under kdtrain's cache, and
turns the entry into a teacher of the trial's student arch, width, depth, hidden and dropout with that file as its
weights; the entry's own name, data, output and classes are kept. From there it is a teacher from a checkpoint like
any other (cached by the file's content, never retrained).
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from pathlib import Path

from kdtrain.errors import UsageError


class TrialTeacherError(UsageError):
    """A from_study that names no finished trial: one line, exit code 2, nothing written."""


def parse(text: str, where: str) -> tuple[str, int | None]:
    """'STUDY#N' -> (STUDY, N); 'STUDY' -> (STUDY, None): the confirmed pick."""
    name, sep, number = text.rpartition("#") if "#" in text else (text, "", "")
    if not name.strip() or (sep and not number.isdigit()):
        raise TrialTeacherError(
            f"{where}: expected STUDY#TRIAL (a trial number) or STUDY (its confirmed pick), got {text!r}"
        )
    return name, int(number) if sep else None


def resolve(cfg, storage_url: str | None = None, tracking_uri: str | None = None, log=print):
    """cfg with each teachers[].from_study entry turned into a teacher of that trial's student with its trained
    weights (unchanged without one). A study, trial or run that cannot give one is a TrialTeacherError."""
    if not any(t.from_study for t in cfg.teachers):
        return cfg
    teachers = tuple(_resolved(t, storage_url, tracking_uri, log) if t.from_study else t for t in cfg.teachers)
    return dataclasses.replace(cfg, teachers=teachers)


def _resolved(t, storage_url, tracking_uri, log):
    from kdtrain.errors import KdtrainError
    from kdtrain.paths import home
    from kdtrain.shared import atomic_dir
    from kdtrain.study import search
    from kdtrain.tracking.client import MODEL_ARTIFACT, Tracker
    from kdtrain.tracking.params import trial_config

    where = f"teachers ({t.name}).from_study"
    if t.logits or (t.weights and not Path(t.weights).name == MODEL_ARTIFACT):
        raise TrialTeacherError(f"{where}: the trial's model is the teacher; drop weights and logits")
    name, number = parse(t.from_study, where)
    try:
        study = search.load(name, storage_url)
    except KdtrainError as e:
        raise TrialTeacherError(f"{where}: {e}") from None
    tracker = Tracker(search.tracking_uri(study, tracking_uri))
    trial = _pick(study, number, tracker, where)
    run_id = trial.user_attrs.get(search.T_RUN)
    if run_id is None:
        raise TrialTeacherError(f"{where}: trial {trial.number} of {name!r} has no MLflow run")
    folder = home() / "cache" / "trial_teachers" / f"{name}-trial{trial.number}-{run_id}"
    src = trial_config(tracker, run_id).student
    if not (folder / MODEL_ARTIFACT).exists():
        with tempfile.TemporaryDirectory() as tmp:
            got = tracker.download(run_id, tmp, MODEL_ARTIFACT)
            with atomic_dir(folder) as out:
                shutil.copy(got, out / MODEL_ARTIFACT)
    log(
        f"teacher {t.name}: trial {trial.number} of study {name} (MLflow run {run_id[:8]}), {src.arch} width "
        f"{src.width}, val_acc {trial.values[0] if trial.values else float('nan'):.4f}"
    )
    return dataclasses.replace(
        t,
        arch=src.arch,
        width=src.width,
        depth=src.depth,
        hidden=src.hidden,
        dropout=src.dropout,
        pretrained=False,
        weights=str(folder / MODEL_ARTIFACT),
    )


def _pick(study, number: int | None, tracker, where: str):
    """The complete trial named, or the confirmed pick; one clear error otherwise."""
    from kdtrain.study import search

    done = {t.number: t for t in search.trials(study, "COMPLETE")}
    listed = f"complete trials: {', '.join(map(str, sorted(done)[:20])) or 'none'}"
    if number is None:
        from kdtrain.ship.registry import confirmed_trials

        confirmed = {n: c for n, c in confirmed_trials(tracker, study.study_name).items() if n in done}
        if not confirmed:
            raise TrialTeacherError(
                f"{where}: study {study.study_name!r} has no confirmed trial to pick; run kdtrain "
                f"confirm {study.study_name} --trial N, or name one as {study.study_name}#N "
                f"({listed})"
            )
        number = max(confirmed, key=lambda n: confirmed[n]["val"])
    if number not in done:
        state = next((t.state.name for t in study.trials if t.number == number), None)
        raise TrialTeacherError(
            f"{where}: trial {number} of {study.study_name!r} "
            + (f"is {state}, not complete" if state else "does not exist")
            + f" ({listed})"
        )
    return done[number]
