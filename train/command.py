"""How every ``pneumo train``, ``pneumo evaluate`` and ``pneumo data`` subcommand runs.

What the entry points in :mod:`train.cli` and :mod:`train.data_cli` share lives here, once:

* TensorFlow's C++ start-up messages are silenced (``TF_CPP_MIN_LOG_LEVEL``) before anything imports it;
* logs go to stderr: INFO, or WARNING with ``--quiet``;
* a library error (:class:`train.errors.TrainError`, :class:`edge_runtime.errors.EdgeError`) is printed
  as ``PROG: error: MESSAGE`` and exits 2 when it is a bad setting (:class:`train.errors.ConfigError`,
  a usage error), 1 otherwise;
* argparse's own exit (0 after ``--help``, 2 on a malformed command line or ``parser.error``) is
  returned like any other exit code, so a caller always gets an int;
* :func:`library_output_on_stderr` keeps what libraries print (Keras' progress bars) off stdout,
  which carries the command's result alone: a table, or JSON with ``--json``.

Library modules never see this module or argparse (STYLE.md rule 1).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence

Command = Callable[[argparse.Namespace], int]


def run_command(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    command: Command,
    failures: tuple[type[BaseException], ...] = (),
) -> int:
    """Parse ``argv``, set up logging and run ``command``; its exit code, or the code of its error.

    ``failures``: further exception types reported as failures (exit 1) rather than tracebacks.
    """
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as exc:
        return _exit_code(exc)
    setup_logging(quiet=bool(getattr(args, "quiet", False)))
    # A command with subcommands (pneumo data check) names the one that failed.
    sub = getattr(args, "command", None)
    label = f"{prog} {sub}" if isinstance(sub, str) else prog
    try:
        return int(command(args))
    except SystemExit as exc:  # parser.error() inside the command: a usage error found late
        return _exit_code(exc)
    except (*library_errors(), *failures) as exc:
        return report_error(label, exc)


def setup_logging(quiet: bool) -> None:
    # Set before TensorFlow is imported (by the command, lazily): it reads the variable once, at import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(message)s", stream=sys.stderr
    )


def library_errors() -> tuple[type[BaseException], ...]:
    """The errors a library raises for a failure its message explains (no traceback wanted)."""
    from edge_runtime.errors import EdgeError
    from train.errors import TrainError

    return (TrainError, EdgeError)


def report_error(prog: str, exc: BaseException) -> int:
    """Print ``exc`` on stderr; its exit code: 2 for a bad setting (usage), 1 for any other failure."""
    from train.errors import ConfigError

    sys.stderr.write(f"{prog}: error: {exc}\n")
    return 2 if isinstance(exc, ConfigError) else 1


@contextlib.contextmanager
def library_output_on_stderr() -> Iterator[None]:
    """Anything printed inside the block goes to stderr: Keras writes progress bars to stdout."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def _exit_code(exc: SystemExit) -> int:
    """argparse exits with an int; ``sys.exit("message")`` or ``None`` reads as 2 and 0 like the shell's."""
    if exc.code is None:
        return 0
    return exc.code if isinstance(exc.code, int) else 2
