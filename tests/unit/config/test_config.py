import dataclasses

import pytest
import yaml
from support import ROOT, run_cli

from kdtrain import config
from kdtrain.config import ConfigError

SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_shipped_sweep_file_loads(path):
    cfg = config.load(path)
    assert cfg.teachers and cfg.study.name
    assert set(cfg.kd_teachers) <= {t.name for t in cfg.teachers}


def test_quickstart_is_mnist1d_with_two_teacher_families():
    cfg = config.load(ROOT / "sweeps" / "quickstart.yaml")
    assert cfg.data.name == "mnist1d" and cfg.data.size == 5000
    assert len({t.arch for t in cfg.teachers}) >= 2
    assert cfg.student.arch in ("mlp", "cnn1d")


def test_config_is_frozen(tiny_sweep):
    cfg = config.load(tiny_sweep)
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'alpha'"):
        cfg.kd.alpha = 0.1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError, match="cannot assign to field 'kd'"):
        cfg.kd = None  # type: ignore[misc]
    assert cfg.kd.alpha == 0.7


def test_defaults_are_the_classic_kd_settings():
    cfg = config.from_dict({"teachers": [{"name": "t", "arch": "mlp"}]})
    assert cfg.kd.temperature == 4.0 and cfg.kd.alpha == 0.7 and cfg.kd_teachers == ["t"]


BAD = {
    "unknown key": ({"kd": {"temprature": 3}}, ["kd.temprature: unknown key"]),
    "unknown section": ({"trian": {}}, ["trian: unknown section"]),
    "wrong type": ({"train": {"epochs": "ten"}}, ["train.epochs: expected int"]),
    "alpha above 1": ({"kd": {"alpha": 1.5}}, ["kd.alpha: must be in [0, 1]"]),
    "alpha below 0": ({"kd": {"alpha": -0.1}}, ["kd.alpha: must be in [0, 1]"]),
    "T zero": ({"kd": {"temperature": 0}}, ["kd.temperature: must be > 0"]),
    "width zero": ({"student": {"width": 0}}, ["student.width: must be >= 1"]),
    "unknown dataset": ({"data": {"name": "imagenet"}}, ["data.name: unknown dataset 'imagenet'"]),
    "unknown arch": ({"student": {"arch": "vit"}}, ["student.arch: unknown arch 'vit'"]),
    "teacher not in pool": ({"kd": {"teachers": ["ghost"]}}, ["kd.teachers: 'ghost' is not in the teacher pool"]),
    "bad search key": ({"search": {"kd.tau": {"type": "float", "low": 1, "high": 2}}}, ["search.kd.tau"]),
    "subset of unknown teacher": (
        {"search": {"kd.teachers": {"type": "subset", "of": ["t", "ghost"]}}},
        ["search.kd.teachers.of: 'ghost'"],
    ),
    "unknown loss": ({"kd": {"loss": "crd"}}, ["kd.loss: one of kd, dkd, dist, got 'crd'"]),
    "negative dkd weights": (
        {"kd": {"loss": "dkd", "dkd_alpha": -1, "dkd_beta": -0.5}},
        ["kd.dkd_alpha: must be >= 0", "kd.dkd_beta: must be >= 0"],
    ),
    "negative dist weights": (
        {"kd": {"dist_beta": -1, "dist_gamma": -2}},
        ["kd.dist_beta: must be >= 0", "kd.dist_gamma: must be >= 0"],
    ),
    "negative warm-up": ({"kd": {"warmup_epochs": -1}}, ["kd.warmup_epochs: must be >= 0"]),
    "no baseline seed": ({"study": {"baseline_seeds": 0}}, ["study.baseline_seeds: must be >= 1"]),
    "dist standardized": (
        {"kd": {"loss": "dist", "standardize": True}},
        ["kd.standardize: true applies to kd.loss kd and dkd, not to dist"],
    ),
    "dist on batches of one": (
        {"kd": {"loss": "dist"}, "train": {"batch_size": 1}},
        ["kd.loss: dist needs train.batch_size >= 2"],
    ),
    "search unknown loss": (
        {"search": {"kd.loss": {"type": "categorical", "choices": ["kd", "crd"]}}},
        ["search.kd.loss.choices: unknown loss 'crd' (known: kd, dkd, dist)"],
    ),
    "search loss as a float": (
        {"search": {"kd.loss": {"type": "float", "low": 0, "high": 1}}},
        ["search.kd.loss: use type categorical with choices from kd, dkd, dist"],
    ),
    "search a setting no trial uses": (
        {"search": {"kd.dkd_beta": {"type": "float", "low": 1, "high": 8}}},
        ["search.kd.dkd_beta: never used: only kd.loss dkd uses it"],
    ),
    "search dist on batches of one": (
        {"train": {"batch_size": 1}, "search": {"kd.loss": {"type": "categorical", "choices": ["kd", "dist"]}}},
        ["search.kd.loss: the choice dist needs train.batch_size >= 2"],
    ),
}


def base():
    return {"data": {"name": "synthetic"}, "teachers": [{"name": "t", "arch": "mlp"}]}


@pytest.mark.parametrize("case", sorted(BAD))
def test_each_bad_value_is_named(case):
    over, expected = BAD[case]
    raw = base()
    for k, v in over.items():
        raw[k] = {**raw.get(k, {}), **v} if isinstance(raw.get(k), dict) else v
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    for text in expected:
        assert text in str(e.value)
    assert e.value.exit_code == 2


def test_loss_settings_defaults_and_allowed_values():
    cfg = config.from_dict(base())
    kd = cfg.kd
    assert (kd.loss, kd.standardize, kd.dkd_alpha, kd.dkd_beta, kd.warmup_epochs, kd.dist_beta, kd.dist_gamma) == (
        "kd",
        False,
        1.0,
        8.0,
        0,
        1.0,
        1.0,
    )
    assert cfg.study.baseline_seeds == 3
    assert config.allowed_values()["kd.loss"] == ["kd", "dkd", "dist"]


def test_a_search_over_the_losses_is_accepted():
    raw = {
        **base(),
        "kd": {"loss": "dkd"},
        "search": {
            "kd.dkd_beta": {"type": "float", "low": 1, "high": 8},  # before kd.loss in the file: fine
            "kd.loss": {"type": "categorical", "choices": ["kd", "dkd", "dist"]},
            "kd.dist_gamma": {"type": "float", "low": 0, "high": 2},
            "kd.standardize": {"type": "categorical", "choices": [False, True]},
        },
    }
    assert config.from_dict(raw).search["kd.loss"]["choices"] == ["kd", "dkd", "dist"]


def test_every_problem_reported_at_once():
    raw = {
        "data": {"name": "imagenet", "colour": "red"},
        "teachers": [{"name": "t", "arch": "transformer", "width": 0}],
        "student": {"arch": "vit", "width": 0},
        "train": {"epochs": "ten"},
        "kd": {"alpha": 2, "temperature": -1, "teachers": ["ghost"]},
    }
    with pytest.raises(ConfigError) as e:
        config.from_dict(raw)
    msg = str(e.value)
    for field in (
        "data.name",
        "data.colour",
        "teachers[0] (t).arch",
        "teachers[0] (t).width",
        "student.arch",
        "student.width",
        "train.epochs",
        "kd.alpha",
        "kd.temperature",
        "kd.teachers",
    ):
        assert field in msg, field
    assert len(e.value.problems) == 10
    assert msg.startswith("config: 10 problems:")


def test_set_overrides_parse_yaml_values(tiny_sweep):
    cfg = config.load(
        tiny_sweep,
        ["kd.alpha=0.25", "kd.teachers=[big, conv]", "student.arch=cnn1d", "teachers.conv.width=12", "train.epochs=2"],
    )
    assert cfg.kd.alpha == 0.25 and cfg.kd.teachers == ["big", "conv"] and cfg.student.arch == "cnn1d"
    assert cfg.teacher("conv").width == 12 and cfg.train.epochs == 2
    assert isinstance(cfg.kd.alpha, float)


def test_bad_overrides_are_reported_with_file_problems(tiny_sweep):
    with pytest.raises(ConfigError) as e:
        config.load(tiny_sweep, ["kd.alpha=3", "noequals", "teachers.ghost.width=3", "kd.temperature=hot"])
    msg = str(e.value)
    assert "kd.alpha" in msg and "--set noequals" in msg and "teachers.ghost" in msg and "kd.temperature" in msg


def test_malformed_yaml_names_the_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("data:\n  name: [mnist1d\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        config.load(p)


def test_missing_file():
    with pytest.raises(ConfigError, match="no such file"):
        config.load("nope.yaml")


def test_durations():
    assert config.parse_duration("8h") == 8 * 3600
    assert config.parse_duration("1h30m") == 5400
    assert config.parse_duration(90) == 90
    with pytest.raises(ValueError, match=r"not a duration: 'soon' \(use e\.g\. 8h, 30m, 90s, 1h30m\)"):
        config.parse_duration("soon")
    with pytest.raises(ValueError, match="not a duration: '-1h'"):
        config.parse_duration("-1h")
    with pytest.raises(ValueError, match="must be positive: '0m'"):
        config.parse_duration("0m")


def test_cli_bad_config_exits_2_with_one_message_and_writes_nothing(tmp_path):
    raw = base()
    raw["kd"] = {"alpha": 1.5, "temperature": 0, "teachers": ["ghost"]}
    raw["student"] = {"width": 0, "arch": "vit"}
    raw["data"] = {"name": "nope"}
    raw["train"] = {"epocs": 3}
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    home = tmp_path / "clihome"
    for cmd in ("train", "teachers"):
        r = run_cli(cmd, p, env={"KDTRAIN_HOME": str(home)})
        assert r.returncode == 2
        assert "Traceback" not in r.stderr and r.stdout == ""
        for field in (
            "kd.alpha",
            "kd.temperature",
            "kd.teachers",
            "student.width",
            "student.arch",
            "data.name",
            "train.epocs",
        ):
            assert field in r.stderr
        assert r.stderr.count("kdtrain: error") == 1
    assert not home.exists()


def test_readme_tables_name_exactly_the_registries_and_the_fields():
    """The docs' sweep-file table, Datasets table and Model families name what the code registers."""
    import dataclasses
    import re

    from kdtrain.data.datasets import AUGMENTATIONS, DATASETS
    from kdtrain.distill.losses import ENSEMBLES, LOSSES
    from kdtrain.distill.models import MODELS
    from kdtrain.distill.train import OPTIMIZERS, SCHEDULES

    text = "".join("\n" + p.read_text() for p in sorted((ROOT / "docs").glob("*.md")))  # the site's pages

    def section(title: str) -> str:
        return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]

    rows = {m[1]: m[2] for m in re.finditer(r"^\| `(\w+)` \| (.*) \|$", section("The sweep file"), re.M)}

    def listed(section: str, key: str) -> list[str]:  # "`optimizer` (sgd, adam, adamw)" -> [sgd, adam, adamw]
        return re.search(rf"`{key}` \(\[?([^)\]]*)\]?\)", rows[section])[1].split(", ")

    assert listed("data", "name") == list(DATASETS)
    assert listed("data", "augment") == list(AUGMENTATIONS)
    assert listed("train", "optimizer") == list(OPTIMIZERS)
    assert listed("train", "schedule") == list(SCHEDULES)
    assert listed("kd", "ensemble") == list(ENSEMBLES)
    assert listed("kd", "loss") == list(LOSSES)
    for name, cls in config.SECTIONS.items():  # every key of every section
        keys = re.findall(r"`(\w+)`", rows[name])  # in the README's reading order, each field once
        assert sorted(keys) == sorted(f.name for f in dataclasses.fields(cls)) and len(set(keys)) == len(keys), name
    teacher_keys = re.search(r"`\{(.*)\}`", rows["teachers"])[1].split(", ")
    assert sorted(teacher_keys) == sorted(f.name for f in dataclasses.fields(config.TeacherConfig))

    datasets = [
        n
        for row in section("Datasets").splitlines()[2:]
        if row.startswith("| `")
        for n in re.findall(r"`(\w+)`", row.split(" | ")[0])
    ]
    assert datasets == list(DATASETS)
    assert set(re.findall(r"`(\w+)`", section("Model families"))) == set(MODELS)


def test_a_bare_number_after_a_unit_is_refused_not_read_as_seconds():
    with pytest.raises(ValueError, match=r"'1h30' \(a number after a unit needs its own unit: write 1h30m or 1h30s"):
        config.parse_duration("1h30")  # was 3630 s: the 30 read as seconds
    assert config.parse_duration("1h30m") == 5400 and config.parse_duration("90") == 90
