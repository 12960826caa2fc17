"""Where a node keeps what it knows of each module, under its state directory::

<state-dir>/modules/<module>/module.json    what the module state machine must remember
<state-dir>/modules/<module>/module.sock    the module's control socket (tandem start/stop/…)
<state-dir>/modules/<module>/module.log     every state change with its reason
<state-dir>/modules/<module>/app.log        what the user's scripts printed
<state-dir>/modules/<module>/aside/         files a split brain's yielding side kept
<state-dir>/modules/<module>/<index>/       one replication stream (journal, control.sock)
"""

from __future__ import annotations

import os

from tandem.engine.control.channel import SOCKET_NAME

DEFAULT_STATE_DIR = "/var/lib/tandem"
STATE_DIR_VARIABLE = "TANDEM_STATE_DIR"
DEFAULT_CONFIG_DIR = "/etc/tandem"
CONFIG_DIR_VARIABLE = "TANDEM_CONFIG_DIR"
MODULE_SOCKET = "module.sock"
DEFAULT_API_PORT = 9453  # every node's HTTP API and console (the same on every node)


def default_state_dir() -> str:
    return os.environ.get(STATE_DIR_VARIABLE) or DEFAULT_STATE_DIR


def default_config_dir() -> str:
    return os.environ.get(CONFIG_DIR_VARIABLE) or DEFAULT_CONFIG_DIR


def module_dir(state_dir: str, module: str) -> str:
    return os.path.join(state_dir, "modules", module)


def module_socket(state_dir: str, module: str) -> str:
    return os.path.join(module_dir(state_dir, module), MODULE_SOCKET)


def module_log(state_dir: str, module: str) -> str:
    return os.path.join(module_dir(state_dir, module), "module.log")


def app_log(state_dir: str, module: str) -> str:
    return os.path.join(module_dir(state_dir, module), "app.log")


def stream_dir(state_dir: str, module: str, index: int) -> str:
    """Where a stream keeps its journal and control socket, whichever role the node has."""
    return os.path.join(module_dir(state_dir, module), str(index))


ASIDE_MARKER = "keep-aside.json"  # in a stream's directory: keep what the next resync changes


def aside_marker(state_dir: str, module: str, index: int) -> str:
    return os.path.join(stream_dir(state_dir, module, index), ASIDE_MARKER)


def journal_dir(state_dir: str, module: str, index: int) -> str:
    return os.path.join(stream_dir(state_dir, module, index), "journal")


def control_socket(state_dir: str, module: str, index: int) -> str:
    return os.path.join(stream_dir(state_dir, module, index), SOCKET_NAME)
