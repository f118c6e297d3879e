"""Property-based bad input: whatever a sweep file or a --set holds, kdtrain answers with a Config or one
ConfigError (exit code 2), never a traceback.

The strategies draw section names, keys and values from the real ones (and from the registries), so that
most examples get past the YAML parser into type and value validation; test_strategies_reach_* checks that.
Deterministic (derandomize) and quick: the file runs in a few seconds.
"""

import dataclasses
import typing

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from support import ROOT, refused

from kdtrain import config
from kdtrain.config import Config, ConfigError
from kdtrain.data.datasets import AUGMENTATIONS, DATASETS
from kdtrain.distill.losses import ENSEMBLES
from kdtrain.distill.models import MODELS
from kdtrain.distill.train import OPTIMIZERS, SCHEDULES

QUICKSTART = ROOT / "sweeps" / "quickstart.yaml"
FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=150,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- strategies

NAMES = ["cnn_wide", "gru", "t", ""]  # the quickstart's teachers, a short one, an empty one
WORDS = sorted(
    {
        *DATASETS,
        *MODELS,
        *OPTIMIZERS,
        *SCHEDULES,
        *ENSEMBLES,
        *AUGMENTATIONS,
        *config.METRICS,
        *config.SAMPLERS,
        *config.PRUNERS,
        *config.DIRECTIONS,
        *config.SEARCH_TYPES,
        *config.BACKENDS,
        *NAMES,
        "8h",
        "30m",
        "soon",
        "auto",
        "cpu",
        "cuda",
        "max_params",
        "max_latency_ms",
        "2001-13-45",
    }
)
FIELDS = {name: [f.name for f in dataclasses.fields(cls)] for name, cls in config.SECTIONS.items()}
TEACHER_FIELDS = [f.name for f in dataclasses.fields(config.TeacherConfig)]
DOTTED = [f"{s}.{k}" for s, keys in FIELDS.items() for k in keys]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-3, 300)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(WORDS)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=6) | st.integers(), inner, max_size=4)
    ),
    max_leaves=12,
)
"""Any YAML value: scalars, lists and mappings, nested."""


edges = st.sampled_from([-1, 0, 0.0, 0.5, 1, 1.5, 64])  # around the bounds of the value checks
small = st.sampled_from(WORDS) | edges | st.integers(-2, 70) | st.floats(-1, 25) | st.booleans() | st.none()
plausible = (
    small
    | st.lists(small, max_size=3)
    | st.dictionaries(st.sampled_from(WORDS) | st.integers(-1, 3) | st.none(), small, max_size=3)
)
"""Values of a real key: mostly scalars of about the right size, so that type and value checks fire."""


def mapping(keys: list[str]):
    """Mostly the real keys, sometimes a wrong one; mostly plausible values; sometimes not a mapping at all."""
    real = st.sampled_from(keys)
    return st.one_of(
        [st.dictionaries(st.one_of([real] * 4 + [st.text(max_size=8)]), plausible | values, max_size=6)] * 4 + [values]
    )  # one_of picks a branch uniformly: 4 to 1


search_spec = (
    st.fixed_dictionaries(
        {"type": st.sampled_from(config.SEARCH_TYPES) | values},
        optional={
            "low": scalars,
            "high": scalars,
            "log": st.booleans() | scalars,
            "step": scalars,
            "choices": values,
            "of": st.lists(st.sampled_from(NAMES) | scalars, max_size=3) | scalars,
            "colour": scalars,
        },
    )
    | values
)
random_docs = st.fixed_dictionaries(
    {},
    optional={
        **{name: mapping(keys) for name, keys in FIELDS.items()},
        "teachers": st.lists(st.fixed_dictionaries({"name": st.sampled_from(NAMES)}) | st.just({}), max_size=3).flatmap(
            lambda ts: st.tuples(*[mapping(TEACHER_FIELDS) for _ in ts]).map(
                lambda extra: [{**t, **e} if isinstance(e, dict) else e for t, e in zip(ts, extra, strict=False)]
            )
        )
        | values,
        "search": st.dictionaries(st.sampled_from(DOTTED) | st.text(max_size=10), search_spec, max_size=4) | values,
        "trian": values,
    },
)
"""Sweep files built from the real sections and keys, anything in them."""


def mutate(changes: dict[str, tuple[str, object]]) -> dict:
    """The quickstart sweep file with a setting changed per part: {'kd': ('alpha', 3), 'teachers.1': ...}."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    for part, (key, value) in changes.items():
        node = doc["teachers"][int(part[-1])] if part.startswith("teachers.") else doc.setdefault(part, {})
        node[key] = value
    return doc


PARTS = {**FIELDS, "teachers.0": TEACHER_FIELDS, "teachers.1": TEACHER_FIELDS, "search": [*DOTTED, "x"]}
mutated_docs = st.fixed_dictionaries(
    {},
    optional={
        part: st.tuples(st.sampled_from(keys), search_spec if part == "search" else plausible)
        for part, keys in PARTS.items()
    },
).map(mutate)
"""The quickstart sweep file with a few settings changed (one per section at most): every example gets to type
and value validation."""

sweep_docs = random_docs | mutated_docs

yamlish_bytes = st.text(st.sampled_from(list("{}[]:,-?&*!|>'\"%@`# \n\tab01-.x")), max_size=60).map(str.encode)
file_bytes = st.binary(max_size=200) | yamlish_bytes | sweep_docs.map(lambda d: yaml.safe_dump(d).encode())

set_keys = st.sampled_from(
    [
        *DOTTED,
        "teachers.cnn_wide.width",
        "teachers.gru.epochs",
        "teachers.ghost.lr",
        "teachers.cnn_wide",
        "teachers",
        "search.x",
        "search.kd.alpha",
        "kd",
        "kd.alpha.x",
    ]
) | st.text(max_size=12)
set_values = (
    st.text(max_size=30)
    | st.sampled_from(
        [
            "[1, 2]",
            "{type: float, low: 0, high: 1}",
            "2001-13-45",
            "1" * 5000,
            "0x" + "f" * 40,
            "&a [*a]",
            "[" * 3000,
            "{a: 1",
            "null",
            "true",
            "-1",
            ".nan",
            "[cnn_wide, gru]",
        ]
    )
    | scalars.map(lambda v: yaml.safe_dump(v).strip())
)
overrides = st.lists(st.builds(lambda k, v: f"{k}={v}", set_keys, set_values) | st.text(max_size=20), max_size=4)


def outcome(load) -> Config | ConfigError:
    """The Config or the ConfigError; anything else fails the test with its traceback."""
    try:
        return load()
    except ConfigError as e:
        assert e.exit_code == 2 and e.problems and all("\n" not in p for p in e.problems)
        return e


# --------------------------------------------------------------------------- properties


@FUZZ
@given(content=file_bytes)
@example(content=b"\xff\xfe\x00bad")  # used to end in UnicodeDecodeError
@example(content=b"data: {name: 2001-13-45}")  # ValueError from PyYAML's date constructor
@example(content=b"[" * 3000)  # RecursionError
@example(content=b"kd: {teachers: &a [*a]}")  # a list that contains itself
@example(content=b"study: {constraints: {1: 2}}")  # 'int' object is not subscriptable
@example(content=b"search: {kd.alpha: {type: [float]}}")  # unhashable type: 'list'
@example(content=b"study: {objectives: {1: maximize}}")  # TypeError: sequence item 0: expected str instance
@example(content=b"study: {objectives: {val_accuracy: maximize, 2001-01-01: minimize}}")  # the same, a date
def test_any_bytes_load_or_raise_config_error(tmp_path, content):
    p = tmp_path / "sweep.yaml"
    p.write_bytes(content)
    outcome(lambda: config.load(p))


@FUZZ
@given(doc=sweep_docs | values)
def test_any_yaml_document_loads_or_raises_config_error(doc):
    outcome(lambda: config.from_dict(yaml.safe_load(yaml.safe_dump(doc)), "sweep.yaml"))


@FUZZ
@given(pairs=overrides)
@example(pairs=["kd.alpha=1", "kd.alpha.x=2"])  # 'float' object does not support item assignment
@example(pairs=["data.name=2001-13-45"])  # ValueError from PyYAML
@example(pairs=["teachers.gru=5"])
@example(pairs=["study.objectives={~: maximize}"])  # TypeError: sequence item 0: expected str instance
def test_any_set_overrides_load_or_raise_config_error(pairs):
    outcome(lambda: config.load(QUICKSTART, pairs))


@settings(FUZZ, max_examples=40)
@given(content=st.binary(max_size=100) | yamlish_bytes)
@example(content=b"\xff\xfe\x00bad")
def test_cli_refuses_any_bytes_with_one_message(tmp_path, capsys, content):
    (tmp_path / "sweep.yaml").write_bytes(content)
    err = refused(tmp_path, capsys, [tmp_path / "sweep.yaml"], 2)
    assert sum(line.startswith("kdtrain: error:") for line in err.splitlines()) == 1


@settings(FUZZ, max_examples=40)
@given(doc=sweep_docs, search=st.sampled_from([None, {}, 5, "x", {"kd.tau": {"type": "float"}}]))
def test_cli_refuses_any_document_without_a_valid_search_with_one_message(tmp_path, capsys, doc, search):
    doc = {**doc, "search": search}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(doc))
    err = refused(tmp_path, capsys, [tmp_path / "sweep.yaml"], 2)
    assert sum(line.startswith("kdtrain: error:") for line in err.splitlines()) == 1


# --------------------------------------------------------------------------- found by fuzzing


@pytest.mark.parametrize("key", ["1", "~", "true", "2001-01-01", "1.5"])
@pytest.mark.parametrize("setting", ["study.objectives", "study.constraints"])
def test_mapping_setting_with_a_key_that_is_not_text(setting, key):
    """A metric YAML reads as a number, null, bool or date ended in a TypeError (', '.join of the objectives)."""
    value = "maximize" if setting == "study.objectives" else "5"
    e = outcome(lambda: config.load(QUICKSTART, [f"{setting}={{{key}: {value}}}"]))
    assert isinstance(e, ConfigError)
    assert any(p.startswith(f"{setting}: keys must be text, got ") for p in e.problems), e.problems


def numeric_settings() -> list[str]:
    """Every setting (dotted, as --set takes it) that holds a number, the teachers' included."""
    out = []
    for where, cls in [*config.SECTIONS.items(), ("teachers.cnn_wide", config.TeacherConfig)]:
        for name, f in cls.__pydantic_fields__.items():
            if {int, float} & {f.annotation, *typing.get_args(f.annotation)}:
                out.append(f"{where}.{name}")
    return out


def test_numeric_settings_cover_the_sections():
    keys = numeric_settings()
    assert {
        "kd.temperature",
        "train.lr",
        "train.momentum",
        "study.timeout",
        "profile.max_cv",
        "teachers.cnn_wide.lr",
        "data.val_fraction",
    } <= set(keys) and len(keys) > 30


@pytest.mark.parametrize("text, shown", [(".nan", "nan"), (".inf", "inf"), ("-.inf", "-inf")])
def test_nan_and_inf_are_refused_in_every_numeric_setting(text, shown):
    """.nan passed every range check (it compares false: kd.temperature, train.momentum, kd.dkd_beta, ...) and .inf
    every lower bound (train.lr, kd.temperature, teachers[].lr): a sweep diverged, or trained on nonsense."""
    cases = [f"{k}={text}" for k in numeric_settings()] + [
        f"kd.weights=[1, {text}]",
        f"study.constraints={{max_params: {text}}}",
        f"search.train.lr={{type: float, low: {text}, high: 1}}",
    ]
    for pair in cases:
        e = outcome(lambda pair=pair: config.load(QUICKSTART, [pair]))
        assert isinstance(e, ConfigError) and len(e.problems) == 1, (pair, e)
        key = pair.split("=")[0].replace("teachers.cnn_wide", "teachers[0]")
        where = {
            "kd.weights": "kd.weights[1]",
            "study.constraints": "study.constraints.max_params",
            "search.train.lr": "search.train.lr.low",
        }.get(key, key)
        assert e.problems[0].startswith(f"{where}: {shown} is not a finite number"), (pair, e.problems)


@pytest.mark.parametrize("value", ["", "[]", "~", "{}"])
def test_set_teachers_to_a_value_is_refused_not_ignored(value):
    """--set teachers=[] (or empty, or null) was dropped without a word: the sweep ran with all its teachers."""
    e = outcome(lambda: config.load(QUICKSTART, [f"teachers={value}"]))
    if value == "{}":  # a mapping of teacher names to changes: no change, nothing to refuse
        assert isinstance(e, Config)
    else:
        assert isinstance(e, ConfigError) and e.problems[0].startswith("--set teachers: use teachers.NAME.key=value")


# --------------------------------------------------------------------------- the strategies reach deep


def problems_raised(strategy) -> set[str]:
    """Every problem that the examples of a document strategy raise."""
    seen: set[str] = set()

    @settings(FUZZ, max_examples=500)  # more than the properties: each of many problems must turn up
    @given(doc=strategy)
    def collect(doc):
        result = outcome(lambda: config.from_dict(yaml.safe_load(yaml.safe_dump(doc))))
        seen.update(result.problems if isinstance(result, ConfigError) else ["a valid Config"])

    collect()
    return seen


@pytest.mark.parametrize(
    "strategy, wanted",
    [
        (
            mutated_docs,
            [
                "expected int, got",
                "expected float, got",
                "expected str, got",
                "must be >=",
                "teachers[0] (cnn_wide).",
                "teachers[1] (gru).",
                "search.",
                "a valid Config",
            ],
        ),
        (random_docs, ["unknown key", "unknown section", "expected a mapping", "expected int"]),
    ],
    ids=["mutated", "random"],
)
def test_strategies_reach_type_and_value_validation(strategy, wanted):
    """Not only YAML syntax errors: the documents of test_any_yaml_document_* get to deep problems."""
    seen = problems_raised(strategy)
    for text in wanted:
        assert any(text in p for p in seen), text


# --------------------------------------------------------------------------- found by fuzzing: failing every trial
# Each of these passed validation, trained the teachers, created the study and then failed every trial (or every
# trial that drew the value): Optuna refused the range, config.replace refused the trial's config, or torch/numpy
# raised. Each is now a problem of the sweep file, naming the key.

SEARCH_CASES = {
    "step zero": ("kd.alpha", "{type: float, low: 0, high: 1, step: 0}", "search.kd.alpha.step: must be > 0, got 0"),
    "step negative": ("kd.alpha", "{type: float, low: 0, high: 1, step: -0.1}", "search.kd.alpha.step: must be > 0"),
    "step not a number": (
        "kd.alpha",
        "{type: float, low: 0, high: 1, step: x}",
        "search.kd.alpha.step: must be a number > 0, got 'x'",
    ),
    "step with log": (
        "kd.temperature",
        "{type: float, low: 1, high: 8, log: true, step: 1}",
        ("search.kd.temperature.step: a log range takes no step (Optuna refuses both); remove step or log"),
    ),
    "fractional int step": (
        "student.width",
        "{type: int, low: 2, high: 32, step: 0.5}",
        "search.student.width.step: an int range needs a whole-number step (1, 2, ...), got 0.5",
    ),
    "log not a bool": (
        "kd.alpha",
        "{type: float, low: 0.1, high: 1, log: maybe}",
        "search.kd.alpha.log: must be true or false, got 'maybe'",
    ),
    "unknown dataset": (
        "data.name",
        "{type: categorical, choices: [mnist1d, imagenet]}",
        "search.data.name.choices: unknown dataset 'imagenet' (known: mnist1d, ",
    ),
    "unknown arch": (
        "student.arch",
        "{type: categorical, choices: [cnn1d, vit]}",
        "search.student.arch.choices: unknown arch 'vit' (known: ",
    ),
    "unknown torchvision model": (
        "student.arch",
        "{type: categorical, choices: [cnn1d, 'torchvision:nope']}",
        ("search.student.arch.choices: torchvision:nope: torchvision has no classification model 'nope'"),
    ),
    "bad python ref": (
        "student.arch",
        "{type: categorical, choices: [cnn1d, 'python:nofunction']}",
        "search.student.arch.choices: expected python:package.module:function, got python:nofunction",
    ),
    "unknown optimizer": (
        "train.optimizer",
        "{type: categorical, choices: [adam, lion]}",
        "search.train.optimizer.choices: one of sgd, adam, adamw, got 'lion'",
    ),
    "unknown schedule": (
        "train.schedule",
        "{type: categorical, choices: [cosine, step]}",
        "search.train.schedule.choices: one of onecycle, cosine, constant, got 'step'",
    ),
    "unknown augmentation": (
        "data.augment",
        "{type: categorical, choices: [[], [warp]]}",
        "search.data.augment.choices: unknown augmentation 'warp' (known: ",
    ),
    "augmentation not a list": (
        "data.augment",
        "{type: categorical, choices: [[], flip]}",
        "search.data.augment.choices: expected list, got 'flip'",
    ),
    "choice of the wrong type": (
        "train.lr",
        "{type: categorical, choices: [0.1, fast]}",
        "search.train.lr.choices: expected float, got 'fast'",
    ),
    "float range of an int setting": (
        "student.width",
        "{type: float, low: 2, high: 32}",
        ("search.student.width.type: a float range gives float values, but student.width takes int (use type int)"),
    ),
    "range above a bound": (
        "kd.alpha",
        "{type: float, low: 0.5, high: 2}",
        "search.kd.alpha.high: must be in [0, 1], got 2.0",
    ),
    "range below a bound": (
        "train.lr",
        "{type: float, low: 0, high: 0.1}",
        "search.train.lr.low: must be > 0, got 0.0",
    ),
    "width too large": (
        "student.width",
        "{type: int, low: 8, high: 100000, log: true}",
        "search.student.width.high: must be <= 65536 (units or channels per layer), got 100000",
    ),
    "depth too large": (
        "student.depth",
        "{type: int, low: 1, high: 2000}",
        "search.student.depth.high: must be <= 1000 (layers), got 2000",
    ),
    "choice that needs another setting": (
        "data.name",
        "{type: categorical, choices: [mnist1d, csv]}",
        ("search.data.name.choices: with 'csv', data.path: data.name csv reads a CSV file; set data.path"),
    ),
}


@pytest.mark.parametrize("case", sorted(SEARCH_CASES))
def test_a_searched_value_that_every_trial_would_refuse_is_a_problem(case):
    key, spec, expected = SEARCH_CASES[case]
    e = outcome(lambda: config.load(QUICKSTART, [f"search.{key}={spec}"]))
    assert isinstance(e, ConfigError), case
    assert any(p.startswith(expected) for p in e.problems), e.problems
    assert all(p.startswith(f"search.{key}") for p in e.problems), e.problems  # the base settings are fine


@pytest.mark.parametrize(
    "spec",
    [
        "{type: float, low: 0.1, high: 1, step: 0.1}",
        "{type: int, low: 2, high: 32, step: 2}",
        "{type: int, low: 2, high: 32, log: true, step: 1}",
        "{type: float, low: 0.1, high: 1, log: false}",
    ],
)
def test_steps_and_log_optuna_accepts_still_load(spec):
    key = "student.width" if "int" in spec else "kd.alpha"
    assert config.load(QUICKSTART, [f"search.{key}={spec}"]).search[key]["type"] in ("int", "float")


def test_a_choice_another_searched_setting_can_make_valid_is_accepted():
    """Only a value that fails whatever the other searched settings draw is refused: resnet18's pretrained weights
    need width 64, and width is searched too; the trials that draw a valid pair pass config.replace, at the file's
    check and at each trial's (where the other settings hold the trial's values)."""
    raw = {
        "data": {"name": "synthetic"},
        "teachers": [{"name": "t", "arch": "mlp"}],
        "student": {"arch": "resnet18", "width": 64},
        "search": {
            "student.width": {"type": "categorical", "choices": [32, 64]},
            "student.pretrained": {"type": "categorical", "choices": [True, False]},
        },
    }
    cfg = config.from_dict(raw)
    for width, pretrained in [(32, False), (64, True), (64, False)]:
        config.replace(cfg, {"student.width": width, "student.pretrained": pretrained})
    with pytest.raises(ConfigError, match=r"student\.pretrained: torchvision weights need width 64, got 32"):
        config.replace(cfg, {"student.width": 32, "student.pretrained": True})  # that one trial fails, as before
    raw["student"]["pretrained"] = True
    del raw["search"]["student.pretrained"]  # now every width-32 trial would fail
    e = outcome(lambda: config.from_dict(raw))
    assert isinstance(e, ConfigError) and e.problems == [
        "search.student.width.choices: with 32, student.pretrained: torchvision weights need width 64, got 32"
    ]


SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_every_trial_of_the_shipped_sweeps_passes_validation(path):
    """The search check refuses no trial the shipped sweep files give (config.replace checks each trial's config)."""
    import optuna

    from kdtrain.study import space

    cfg = config.load(path)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(25):
        trial = study.ask()
        config.replace(cfg, space.suggest(trial, cfg.search, cfg.kd.loss))
        study.tell(trial, 0.0)


@pytest.mark.parametrize(
    "pair, expected",
    [
        ("data.seed=-1", "data.seed: must be >= 0, got -1"),  # numpy: expected non-negative integer
        ("data.seed=4294967296", "data.seed: must be < 2**32 = 4294967296 (numpy's seed range), got 4294967296"),
        (
            "student.width=9223372036854775807",
            ("student.width: must be <= 65536 (units or channels per layer), got 9223372036854775807"),
        ),  # torch: RuntimeError
        (
            "teachers.cnn_wide.width=70000",
            ("teachers[0] (cnn_wide).width: must be <= 65536 (units or channels per layer), got 70000"),
        ),
        ("student.depth=1001", "student.depth: must be <= 1000 (layers), got 1001"),
        (
            "student.hidden=[64, 70000]",
            "student.hidden: at most 1000 sizes, each <= 65536, got 2 sizes, the largest 70000",
        ),
    ],
)
def test_seeds_and_sizes_numpy_or_torch_refuse_are_problems(pair, expected):
    over = [pair, "student.arch=mlp"] if pair.startswith("student.hidden") else [pair]
    e = outcome(lambda: config.load(QUICKSTART, over))
    assert isinstance(e, ConfigError) and e.problems == [expected], e


@pytest.mark.parametrize(
    "pair",
    [
        "data.seed=-1",
        "student.width=9223372036854775807",
        "search.data.name={type: categorical, choices: [mnist1d, imagenet]}",
    ],
)
def test_train_refuses_them_before_any_work(tmp_path, capsys, pair):
    """`kdtrain train --set data.seed=-1` ended in numpy's ValueError traceback, a huge width in torch's."""
    refused(tmp_path, capsys, [QUICKSTART, "--set", pair], 2, [pair.split("=")[0]], command=("train",))
