"""ldm/cli.py: a user's mistake is one line ``<program>: error: <message>`` and exit code 2; any other
exception keeps its traceback; the help shows the docstring as written and every default."""
import argparse

import pytest

from ldm.cli import EXIT_USER_ERROR, HelpFormatter, run_main, user_error


def test_a_user_error_is_one_line_and_exit_2(capsys):
    assert EXIT_USER_ERROR == 2
    assert user_error("bad --steps", "tool.py") == 2
    assert capsys.readouterr().err == "tool.py: error: bad --steps\n"
    assert user_error(ValueError("no such file"), None) == 2
    assert capsys.readouterr().err == "error: no such file\n"


def test_run_main_maps_only_the_given_errors(capsys):
    assert run_main(lambda: None, "tool.py", ValueError) == 0
    assert run_main(lambda: 1, "tool.py", ValueError) == 1  # an int is the exit code
    assert run_main(lambda: object(), "tool.py", ValueError) == 0  # a report is success

    def fails():
        raise KeyError("k")

    def mistake():
        raise ValueError("config key 'x' is unknown")

    assert run_main(mistake, "tool.py", (KeyError, ValueError)) == 2
    assert capsys.readouterr().err == "tool.py: error: config key 'x' is unknown\n"
    with pytest.raises(KeyError):  # not a user's mistake: the traceback is kept
        run_main(fails, "tool.py", ValueError)


def test_help_keeps_the_description_layout_and_shows_defaults():
    p = argparse.ArgumentParser(description="Usage:\n\n    tool --steps 5\n", formatter_class=HelpFormatter)
    p.add_argument("--steps", type=int, default=200, help="sampler steps")
    text = p.format_help()
    assert "\n    tool --steps 5\n" in text and "sampler steps (default: 200)" in text
