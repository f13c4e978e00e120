"""The ``realsynth`` command: one sub-command per task, each module adding its own parsers.

``run_commands``: train, eval, compare, sweep, gap, config show; ``data_commands``: data check,
demo, filter, convert; ``weights_commands``: weights convert.
"""

from __future__ import annotations

import argparse
import os
import sys

from realsynth.cli.data_commands import add_data_commands
from realsynth.cli.run_commands import add_run_commands
from realsynth.cli.weights_commands import add_weights_commands
from realsynth.config import ConfigError
from realsynth.data.shards.locations import ShardLocationError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="realsynth",
        description="Train relation detectors on an exact real/synthetic mix with weighted losses.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    add_run_commands(commands)
    add_data_commands(commands)
    add_weights_commands(commands)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse ``argv``; ``KEY=VALUE`` overrides may also follow options (``train --overwrite
    SOLVER.MAX_ITER=5``), which argparse alone refuses once the positionals were taken."""
    args, extra = parser.parse_known_args(argv)
    overrides = getattr(args, "overrides", None)
    if extra and overrides is not None and all("=" in a and not a.startswith("-") for a in extra):
        args.overrides = [*overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``realsynth`` console script; returns the exit status.

    Exit status: 0 done; 1 an error during training (the checkpoint of the last complete step
    is kept) or problems found by ``data check``; 2 bad input (config, data, arguments, a
    checkpoint that does not fit), or an error the user must fix first (a full disk); 130
    Ctrl-C; 141 the output pipe was closed (``realsynth eval RUN | head -1``); 143 SIGTERM.
    """
    args = _parse(_parser(), argv)
    # A file name that is not UTF-8 prints as \xNN instead of ending the command in a traceback.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        return args.handler(args)  # the command's function (set_defaults in its sub-parser)
    except BrokenPipeError:
        return _closed_pipe()
    except (ConfigError, FileNotFoundError, ValueError, ShardLocationError) as exc:
        if os.environ.get("REALSYNTH_DEBUG"):
            raise
        print(f"realsynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("realsynth: interrupted before training started; nothing was saved", file=sys.stderr)
        return 130


def _closed_pipe() -> int:
    """The reader of our output went away: stop quietly, as ``yes | head`` does."""
    # Python would report the failed flush of the dead pipe again at exit: point it elsewhere.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141
