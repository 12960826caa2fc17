"""What every command group shares: exit codes, argument types, the common options."""

from __future__ import annotations

import argparse
import socket

from tandem.engine.config.paths import (
    CONFIG_DIR_VARIABLE,
    DEFAULT_CONFIG_DIR,
    DEFAULT_STATE_DIR,
    STATE_DIR_VARIABLE,
    default_config_dir,
    default_state_dir,
)
from tandem.engine.config.stream import PeerAddress

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by Ctrl-C


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more")
    return value


def peer_address(text: str) -> PeerAddress:
    try:
        return PeerAddress.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir",
        default=default_config_dir(),
        metavar="DIR",
        help="holds modules/NAME.toml and the cluster secret "
        f"(default ${CONFIG_DIR_VARIABLE} or {DEFAULT_CONFIG_DIR})",
    )
    parser.add_argument(
        "--node", default=socket.gethostname(), help="this node's name (default: hostname)"
    )


def state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=default_state_dir(),
        metavar="DIR",
        help=f"journals and control sockets (default ${STATE_DIR_VARIABLE} or {DEFAULT_STATE_DIR})",
    )
