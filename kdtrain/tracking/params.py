"""A run's settings in MLflow and what kdtrain reads back from a finished run: the settings as MLflow params
(flat_params), whether a run written whole is there (logged_whole), and a trial's config and trained student from its
run's artifacts (trial_config, trial_model, trial_student) for the follow-up, kdtrain confirm, export and register."""

from __future__ import annotations

import tempfile

import torch
import yaml

from kdtrain.config import sweepfile
from kdtrain.data import datasets
from kdtrain.distill import features, models
from kdtrain.schema import Config
from kdtrain.tracking import client
from kdtrain.tracking.client import Tracker


def flat_params(cfg: Config) -> dict:
    """The settings as MLflow params, without the loss settings that this run's loss does not use."""
    from kdtrain.distill.losses import LOSS_SETTINGS

    flat = {k: v for k, v in cfg.flat().items() if cfg.kd.loss in LOSS_SETTINGS.get(k, (cfg.kd.loss,))}
    flat["kd.teachers"] = "+".join(cfg.kd_teachers)
    flat["kd.features"] = features.describe(cfg)  # the pairs and losses this run used, not the whole list
    return flat


def logged_whole(tracker: Tracker, exp_id: str, tags: dict) -> bool:
    """Whether the run with these tags (a teacher or baseline run) is logged. Such runs are written whole under
    the study lock, so one still RUNNING there lost its worker mid-write (killed, machine gone): it is closed as
    KILLED and the caller logs the run again."""
    done = False
    for run_id in tracker.find(exp_id, tags):
        if tracker.status(run_id) != "RUNNING":
            done = True
            continue
        tracker.set_tags(run_id, {"fail_reason": "its worker died while logging it; logged again"})
        tracker.end(run_id, "KILLED")
    return done


def trial_config(tracker: Tracker, run_id: str) -> Config:
    """The full config a trial trained with, from its MLflow run (the config.yaml artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        text = tracker.download(run_id, tmp, client.CONFIG_ARTIFACT).read_text()
    return sweepfile.from_dict(yaml.safe_load(text), f"run {run_id}: {client.CONFIG_ARTIFACT}")


def trial_student(tracker: Tracker, run_id: str):
    """(config, dataset, trained model) of a finished trial, from its MLflow run's artifacts."""
    cfg = trial_config(tracker, run_id)
    ds = datasets.load(cfg.data)
    return cfg, ds, trial_model(tracker, run_id, cfg, ds)


def trial_model(tracker: Tracker, run_id: str, cfg: Config, ds: datasets.Dataset):
    """The trained student of a finished trial whose config and data are known, from its run's model.pt."""
    with tempfile.TemporaryDirectory() as tmp:
        state = torch.load(tracker.download(run_id, tmp, client.MODEL_ARTIFACT), map_location="cpu", weights_only=True)
    model = models.from_config(cfg.student, ds.input_shape, ds.num_classes)
    model.load_state_dict(state)
    return model
