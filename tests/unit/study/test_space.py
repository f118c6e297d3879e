"""The conditional search space: a loss's own settings are suggested only to trials of that loss."""

import optuna
import pytest

from kdtrain import config
from kdtrain.study import space

SEARCH = {  # the conditional keys first, to show that kd.loss is suggested before them whatever the order
    "kd.dkd_beta": {"type": "float", "low": 1, "high": 8},
    "kd.dkd_alpha": {"type": "float", "low": 0.5, "high": 2},
    "kd.warmup_epochs": {"type": "int", "low": 0, "high": 5},
    "kd.dist_gamma": {"type": "float", "low": 0, "high": 2},
    "kd.standardize": {"type": "categorical", "choices": [False, True]},
    "kd.loss": {"type": "categorical", "choices": ["kd", "dkd", "dist"]},
    "kd.temperature": {"type": "float", "low": 1, "high": 8},
}
USED = {
    "kd": {"kd.loss", "kd.temperature", "kd.standardize"},
    "dkd": {"kd.loss", "kd.temperature", "kd.standardize", "kd.dkd_beta", "kd.dkd_alpha", "kd.warmup_epochs"},
    "dist": {"kd.loss", "kd.temperature", "kd.dist_gamma"},
}


def sweep(loss="kd", search=SEARCH, **kd):
    return config.from_dict(
        {
            "data": {"name": "synthetic"},
            "teachers": [{"name": "t", "arch": "mlp"}],
            "kd": {"loss": loss, **kd},
            "search": search,
        }
    )


@pytest.fixture
def study():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))


@pytest.mark.parametrize("loss", ["kd", "dkd", "dist"])
def test_a_trial_gets_exactly_the_settings_of_its_loss(study, loss):
    cfg = sweep()
    study.enqueue_trial({"kd.loss": loss})
    trial = study.ask()
    values = space.suggest(trial, cfg.search, cfg.kd.loss)
    assert set(trial.params) == USED[loss]
    assert set(values) == USED[loss] | ({"kd.standardize"} if loss == "dist" else set())
    assert ("kd.dkd_beta" in trial.params) == (loss == "dkd")
    config.replace(cfg, values)  # a valid trial config


def test_a_dist_trial_of_a_standardising_sweep_gets_standardize_off(study):
    cfg = sweep("kd", {"kd.loss": SEARCH["kd.loss"]}, standardize=True)
    for loss in ("dist", "dkd"):
        study.enqueue_trial({"kd.loss": loss})
        trial = study.ask()
        values = space.suggest(trial, cfg.search)
        assert trial.params == {"kd.loss": loss}
        assert config.replace(cfg, values).kd.standardize == (loss != "dist")


def test_random_trials_never_get_a_setting_their_loss_does_not_use(study):
    cfg = sweep()
    seen = set()
    for _ in range(30):
        trial = study.ask()
        values = space.suggest(trial, cfg.search)  # without the base loss: kd.loss is searched
        assert set(trial.params) == USED[values["kd.loss"]]
        config.replace(cfg, values)  # every trial's config is valid, standardised or not
        study.tell(trial, 0.0)
        seen.add(values["kd.loss"])
    assert seen == {"kd", "dkd", "dist"}


def test_the_base_loss_decides_when_kd_loss_is_not_searched(study):
    search = {k: v for k, v in SEARCH.items() if k != "kd.loss"}
    for loss in ("kd", "dkd", "dist"):
        assert set(space.suggest(study.ask(), search, loss)) == USED[loss] - {"kd.loss"}
    cfg = sweep("dkd", {k: SEARCH[k] for k in USED["dkd"] - {"kd.loss"}})  # validated: only settings dkd uses
    assert set(space.suggest(study.ask(), cfg.search)) == USED["dkd"] - {"kd.loss"}  # so the base loss may be left out


def test_base_params_enqueue_only_the_settings_of_the_base_loss():
    assert set(space.base_params(sweep("kd"))) == USED["kd"]
    assert set(space.base_params(sweep("dkd"))) == USED["dkd"]
    assert set(space.base_params(sweep("dist"))) == USED["dist"]
    only_dkd = {**SEARCH, "kd.loss": {"type": "categorical", "choices": ["dkd", "dist"]}}
    assert set(space.base_params(sweep("kd", only_dkd))) == {
        "kd.temperature"
    }  # the sampler picks the loss and the rest
