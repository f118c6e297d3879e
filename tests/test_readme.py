import re

from conftest import ROOT


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    run, test = first_block
    assert "kdtrain sweep sweeps/quickstart.yaml" in run and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, ".ci/run must run the README's test command verbatim"


def test_readme_commands_name_real_files_and_subcommands():
    from kdtrain.cli import build_parser

    text = (ROOT / "README.md").read_text()
    subcommands = set(build_parser()._subparsers._group_actions[0].choices)
    for cmd in re.findall(r"kdtrain (\w+)", text):
        if cmd in ("is", "trains", "train", "sweep", "teachers", "status", "ui", "worker"):
            assert cmd in subcommands | {"is", "trains"}
    for path in set(re.findall(r"sweeps/[\w.]+\.yaml", text)):
        assert (ROOT / path).exists(), path
