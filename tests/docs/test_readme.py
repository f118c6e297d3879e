import argparse
import json
import re

import pytest
from support import ROOT

from kdtrain.cli.args import build_parser

README = (ROOT / "README.md").read_text()
PAGES = sorted((ROOT / "docs").glob("*.md"))
DOCS = README + "".join("\n" + p.read_text() for p in PAGES)
"""The README and every page of the documentation site: their commands are checked alike."""


def test_readme_opens_with_the_two_commands_and_ci_runs_the_second():
    text = (ROOT / "README.md").read_text()
    first_block = re.search(r"```bash\n(.*?)```", text, re.S).group(1).strip().splitlines()
    assert len(first_block) == 2
    run, test = first_block
    assert "kdtrain sweep sweeps/quickstart.yaml" in run and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci, ".ci/run must run the README's test command verbatim"


# ------------------------------------------------------------------ the commands the README shows

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
COMMAND = re.compile(r"(?:^|(?<=[\s/]))kdtrain\s+(\S+)(.*)", re.S)
"""`kdtrain SUB ...` or `.venv/bin/kdtrain SUB ...`; not kdtrain/..., kdtrain.role, kdtrain[onnx], kdtrain-worker."""
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


def shown_commands(text: str) -> list[tuple[str, list[str], str]]:
    """(subcommand, its --flags, where) for every kdtrain command in the README's code: each shell command of a
    fenced block (comments dropped, `&&`, `;` and pipes split; a JSON argv list such as a Kubernetes
    `command: [...]` read as words) and each inline code span (read as a usage synopsis, where `|` separates
    alternatives and a span may wrap across lines)."""
    segments = []
    for block in FENCE.findall(text):
        for line in block.splitlines():
            argv = re.search(r'\[\s*"kdtrain".*\]', line)
            if argv:
                line = " ".join(json.loads(argv.group(0)))
            line = re.sub(r"(^|\s)#.*", "", line)
            segments += [(part, "block: " + line.strip()) for part in re.split(r"&&|\|\||;|\s\|\s", line)]
    prose = FENCE.sub("", text)
    segments += [
        (span.replace("\n", " "), "inline: " + span.replace("\n", " ")) for span in re.findall(r"`([^`]+)`", prose)
    ]
    out = []
    for seg, where in segments:
        m = COMMAND.search(seg)
        if m:
            out.append((m.group(1), FLAG.findall(m.group(2)), where))
    return out


def subcommand_options(parser: argparse.ArgumentParser) -> dict[str, set[str]]:
    """Subcommand -> every option string its argparse parser accepts (help included)."""
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {name: {s for a in sp._actions for s in a.option_strings} for name, sp in sub.choices.items()}


def readme_problems(text: str, options: dict[str, set[str]]) -> list[str]:
    problems, seen = [], set()
    for cmd, flags, where in shown_commands(text):
        if cmd not in options:
            problems.append(f"unknown subcommand {cmd!r} ({where})")
            continue
        seen.add(cmd)
        problems += [f"kdtrain {cmd} does not accept {f} ({where})" for f in flags if f not in options[cmd]]
    problems += [f"subcommand {cmd!r} is not shown in the README" for cmd in sorted(set(options) - seen)]
    return problems


def test_readme_and_docs_commands_use_real_subcommands_and_flags():
    options = subcommand_options(build_parser())
    assert readme_problems(DOCS, options) == []
    shown = {(cmd, f) for cmd, flags, _ in shown_commands(DOCS) for f in flags}
    # the parse reaches code blocks, wrapped inline synopses and the Kubernetes argv list
    assert {
        ("sweep", "--trials"),
        ("sweep", "--no-report"),
        ("confirm", "--seeds"),
        ("confirm", "--trial"),
        ("report", "--no-mlflow"),
        ("worker", "--threads"),
        ("worker", "--wait"),
        ("train", "--set"),
        ("export", "--pareto"),
    } <= shown
    assert len(shown_commands(DOCS)) >= 30
    for page in PAGES:  # each page's own commands too (a page's typo is not hidden by a correct README)
        assert [p for p in readme_problems(page.read_text(), options) if "is not shown" not in p] == [], page.name


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("--pareto --seeds 3", "--pareto --seed 3", "kdtrain confirm does not accept --seed"),  # code block
        ("--trials 30", "--trails 30", "kdtrain sweep does not accept --trails"),
        ("[--no-report]`", "[--no-reprot]`", "kdtrain sweep does not accept --no-reprot"),  # wrapped inline span
        ('"--wait", "30m"', '"--wiat", "30m"', "kdtrain worker does not accept --wiat"),  # argv list
        (
            "`kdtrain status --storage URL`",
            "`kdtrain status --tracking-uri URL`",  # another subcommand's flag
            "kdtrain status does not accept --tracking-uri",
        ),
        ("kdtrain ui ", "kdtrain gui ", "unknown subcommand 'gui'"),
        ("kdtrain ui ", "kdtrain gui ", "subcommand 'ui' is not shown in the README"),
    ],
)
def test_a_misspelled_readme_command_is_caught(old, new, problem):
    """The check above fails on a copy of the docs with one word changed."""
    assert old in DOCS
    # the gui cases rename every mention, at a space or a backquote alike, so that 'ui' is shown nowhere
    changed = DOCS.replace(old, new, 1) if "gui" not in new else re.sub(r"kdtrain ui\b", "kdtrain gui", DOCS)
    problems = readme_problems(changed, subcommand_options(build_parser()))
    assert any(p.startswith(problem) for p in problems), problems


def test_readme_is_short_and_opens_with_the_product():
    """Issue 23: the README opens with what kdtrain is (before the two commands), stays under 250 lines and links
    every page of the documentation site."""
    lines = README.splitlines()
    assert len(lines) <= 250
    before = README.split("```bash", 1)[0]
    assert "knowledge-distillation" in before and len(before.split()) < 150
    assert "docs/images/pareto.png" in README and (ROOT / "docs" / "images" / "pareto.png").stat().st_size > 10_000
    for page in PAGES:
        if page.name != "index.md":
            assert f"docs/{page.name}" in README, page.name


def test_readme_names_real_sweep_files():
    paths = set(re.findall(r"sweeps/[\w./]+\.(?:yaml|py)", DOCS))  # sweeps/examples/ too, and its scripts
    assert {"sweeps/quickstart.yaml", "sweeps/examples/folder.yaml", "sweeps/examples/make_data.py"} <= paths
    for path in paths:
        assert (ROOT / path).exists(), path
