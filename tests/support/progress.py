"""Progress lines as a log reads them (not a terminal): timestamped, with counts and an ETA."""

import re

PROGRESS = re.compile(
    r"(?P<stamp>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) trials (?P<done>\d+)/(?P<target>\d+) \(complete (?P<complete>\d+), "
    r"pruned (?P<pruned>\d+), failed (?P<failed>\d+), running (?P<running>\d+); best val_accuracy "
    r"(?P<best>\d\.\d{4}|-)\)  elapsed (?P<elapsed>\d+m\d\ds)  ETA (?P<eta>\?|\d+m\d\ds)"
)


def progress_lines(stdout: str) -> list[re.Match]:
    lines = [line for line in stdout.splitlines() if " trials " in line and " elapsed " in line]
    matches = [PROGRESS.fullmatch(line) for line in lines]
    assert lines and all(matches), lines
    return matches


def seconds(text: str) -> int:
    m, s = text[:-1].split("m")
    return 60 * int(m) + int(s)
