"""What every command line of this project shares: the exit code of a user's mistake, its one-line
message, and the help formatter that shows the module docstring as written.

A mistake in a command line, a config or an input file ends with one line on stderr,
``<program>: error: <message>`` (argparse's own form; ``error: <message>`` where no program is
named), and exit code 2 (argparse's too), so that wrappers and tests tell it from a failed run
(exit 1). Standard library only: scripts import this before anything heavy, and every package may.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

EXIT_USER_ERROR = 2


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and every option's default."""


def user_error(message: object, prog: str | None = None) -> int:
    """Print ``<prog>: error: <message>`` (``error: <message>`` without ``prog``) on stderr; return
    :data:`EXIT_USER_ERROR` for ``main`` to return."""
    print(f"{prog}: error: {message}" if prog else f"error: {message}", file=sys.stderr)
    return EXIT_USER_ERROR


def run_main(action: Callable[[], object], prog: str | None,
             errors: type[BaseException] | tuple[type[BaseException], ...]) -> int:
    """Call ``action``: its result is the exit code when it is an int, else 0 (None, a report); one
    of ``errors`` (the user's mistakes) becomes one line and :data:`EXIT_USER_ERROR`
    (:func:`user_error`). Anything else propagates: a bug keeps its traceback."""
    try:
        result = action()
    except errors as e:
        return user_error(e, prog)
    return result if isinstance(result, int) else 0
