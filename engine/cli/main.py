"""The `tandem` command. Exit codes: 0 success, 1 the operation failed, 2 bad usage.

Each command group lives in its own file and registers its commands (``run`` is the function
that carries one out): `stream` (mount, receive), `node` (node, check, unit), `operate` (state,
verify, resync, logs, the module commands), `secret` (new, promote, retire, status), `lab` (lab,
demo), `console` (console users and tokens, snapshot).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from tandem.engine import __version__
from tandem.engine.cli import completion, console, lab, node, operate, secret, stream
from tandem.engine.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from tandem.engine.cli.logsetup import configure as configure_logging
from tandem.engine.config.modules import ConfigError
from tandem.engine.control.channel import ControlError
from tandem.engine.lab.lab import LabError
from tandem.fsdriver.mount import MountError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Shared-nothing high availability.")
    parser.add_argument("--version", action="version", version=f"tandem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    stream.add_commands(commands)
    node.add_commands(commands)
    operate.add_commands(commands)
    secret.add_commands(commands)
    lab.add_commands(commands)
    console.add_commands(commands)
    completion.add_commands(commands, parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(args.verbose)
    try:
        if args.command == "demo":
            code: int = args.run(args)
            return code
        try:
            code = args.run(args)
        except (MountError, ConfigError, LabError, ControlError) as exc:
            _error(str(exc) or type(exc).__name__)
            return EXIT_FAILED
        except BrokenPipeError:
            raise
        except OSError as exc:  # e.g. not root: one line, never a traceback
            where = f": {exc.filename}" if exc.filename else ""
            _error(f"{exc.strerror or exc}{where}")
            return EXIT_FAILED
        return code
    except BrokenPipeError:
        # the reader went away (`tandem state | head -1`): its answer was given; say nothing more
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except KeyboardInterrupt:
        print("tandem: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _error(message: str) -> None:
    for line in message.splitlines():
        print(f"tandem: error: {line}", file=sys.stderr)
