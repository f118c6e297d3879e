"""The ground floor: kdtrain's error classes, whose messages are meant for the user (the CLI prints one line, no
traceback), and first_line for the reason inside them. Imports nothing of kdtrain."""

from __future__ import annotations


class KdtrainError(Exception):
    """An error with a message meant for the user (no traceback is shown)."""

    exit_code = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's stop, `timeout`, `kill`), raised in the main thread so that it is handled like Ctrl-C:
    the running trial is failed and queued again, the MLflow run closed, the stop said."""


def stopped_by(e: BaseException | None) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM (a KeyboardInterrupt) that e is or that e was raised while handling, or None. A stop
    that lands in a library's cleanup comes out as the cleanup's own error (shutil.rmtree's EBADF, an SQLite
    write's OperationalError) with the stop as its context: it is still a stop, not a failure."""
    seen = set()
    while e is not None and id(e) not in seen and not isinstance(e, KeyboardInterrupt):
        seen.add(id(e))
        e = e.__context__
    return e


def not_a_stop(record) -> bool:
    """A logging filter: False for a record whose exception a Ctrl-C or SIGTERM caused (MLflow logs the SQLite
    write it cut short with a traceback; kdtrain says the stop once and closes the run as KILLED)."""
    return stopped_by(record.exc_info[1] if record.exc_info else None) is None


def first_line(e: BaseException, limit: int = 200) -> str:
    """An exception's first non-empty line, cut to limit characters (its type name when it says nothing): the
    reason shown inside kdtrain's one-line errors."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(e).__name__


class UsageError(KdtrainError):
    """A flag that cannot be honoured as given (exit code 2, like a bad sweep file): the message says what to give
    instead."""

    exit_code = 2


class DataError(KdtrainError):
    """The user's data (data.path, data.factory, a teacher's logits or weights file) cannot be used: one line
    naming the file and what is wrong, exit code 2 like a bad sweep file."""

    exit_code = 2


class ConfigError(KdtrainError):
    """The sweep file or an override is wrong; lists every problem found."""

    exit_code = 2

    def __init__(self, problems: list[str], source: str = "config"):
        # one line per problem, whatever a key holds (a YAML key may contain a newline)
        self.problems = ["".join(c if c.isprintable() else ascii(c)[1:-1] for c in p) for p in problems]
        lines = "\n".join(f"  - {p}" for p in self.problems)
        n = len(problems)
        super().__init__(f"{source}: {n} problem{'s' if n != 1 else ''}:\n{lines}")
