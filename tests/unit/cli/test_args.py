"""The command line's parser (kdtrain.cli.args): every subcommand and option explained, the study named the same
way in every command."""


def test_every_subcommand_says_what_it_does_and_every_option_has_help():
    """worker, status, export, confirm, register, dashboard and ui had no description; --study, --storage and
    --port had no help in status, dashboard and ui."""
    import argparse

    from kdtrain.cli.args import build_parser

    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    for name, parser in sub.choices.items():
        assert parser.description, f"kdtrain {name} --help has no description"
        for action in parser._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                assert action.help, f"kdtrain {name}: {action.option_strings or action.dest} has no help"


def test_the_study_is_named_the_same_way_in_every_command(capsys):
    """export took --study while report, confirm and register took the study as an argument."""
    from kdtrain.cli.args import build_parser

    parse = build_parser().parse_args
    for command in ("export", "confirm", "register", "worker", "status", "dashboard"):
        extra = {"export": ["--pareto"], "confirm": ["--pareto"], "register": ["--pareto", "--name", "m"]}.get(
            command, []
        )
        assert parse([command, "s1", *extra]).study == parse([command, "--study", "s1", *extra]).study == "s1"
    assert parse(["report", "a", "--study", "b"]).studies_opt == ["b"]
    try:
        parse(["confirm", "a", "--study", "b", "--pareto"])
    except SystemExit as e:
        assert e.code == 2
    assert "the study is named twice, 'a' and --study 'b'" in capsys.readouterr().err
