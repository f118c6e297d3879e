"""The `kdtrain` command: main() parses the arguments (kdtrain.cli.args) and runs the subcommand, each error one
`kdtrain: error:` line. The subcommands are grouped by what they do with a study: train_commands (a sweep file's
models on this machine: teachers, train, profile), sweep_commands (running a study: sweep, worker), study_commands
(reading one: report, status, ui, dashboard, schema), ship_commands (from a study to a shipped student: confirm,
export, register), layer_table (layers).

The work itself lives elsewhere: kdtrain.sweep runs trials, kdtrain.study.search is the Optuna side,
kdtrain.tracking.client the MLflow side, kdtrain.sweep.console the tables and progress bars.
"""

from __future__ import annotations

import sys

from kdtrain.cli import ship_commands, study_commands, sweep_commands, train_commands
from kdtrain.cli.args import build_parser
from kdtrain.cli.layer_table import cmd_layers

COMMANDS = {
    "teachers": train_commands.cmd_teachers,
    "train": train_commands.cmd_train,
    "profile": train_commands.cmd_profile,
    "layers": cmd_layers,
    "sweep": sweep_commands.cmd_sweep,
    "worker": sweep_commands.cmd_worker,
    "report": study_commands.cmd_report,
    "status": study_commands.cmd_status,
    "ui": study_commands.cmd_ui,
    "dashboard": study_commands.cmd_dashboard,
    "schema": study_commands.cmd_schema,
    "confirm": ship_commands.cmd_confirm,
    "export": ship_commands.cmd_export,
    "register": ship_commands.cmd_register,
}
"""Each subcommand (kdtrain.cli.args) and the function that runs it."""


def _stopped(e: KeyboardInterrupt) -> int:
    from kdtrain.errors import Terminated

    print(f"\nkdtrain: {'stopped by SIGTERM' if isinstance(e, Terminated) else 'interrupted'}", file=sys.stderr)
    return 130


def main(argv: list[str] | None = None) -> int:
    import signal

    from kdtrain.errors import KdtrainError, Terminated, stopped_by

    args = build_parser().parse_args(argv)

    def terminated(signum, frame):
        raise Terminated

    signal.signal(signal.SIGTERM, terminated)  # what schedulers and `timeout` send: handled like Ctrl-C
    try:
        return COMMANDS[args.command](args)
    except KdtrainError as e:
        print(f"kdtrain: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        return _stopped(e)
    except Exception as e:  # a database that went away outside a trial (kdtrain status, a report): one line too
        from kdtrain.study.storage import lost_connection, outage_reason

        stop = stopped_by(e)  # a stop that a library's cleanup turned into its own error: still a stop
        if stop is not None:
            return _stopped(stop)
        if not lost_connection(e, context=False):
            raise
        print(f"kdtrain: error: {outage_reason(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
