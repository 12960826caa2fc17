"""Module configuration: one TOML file per module, ``<config-dir>/modules/<name>.toml``, plus the
cluster secret ``<config-dir>/secret`` shared by every module.

Every problem is reported as ``FILE: KEY: problem`` so an admin can fix it without reading code::

    directories = ["/srv/app"]      # replicated in place; directory i uses port + i
    port = 7400                     # optional (default 7400)
    ack = "applied"                 # or "durable" (optional, default "applied")
    timeout = 10.0                  # seconds without an answer before going on alone
    resync_bandwidth = 50.0         # optional: MiB/s a resync may send (default: no cap)
    [nodes]                         # exactly two: node name = address
    alpha = "198.18.0.1"
    beta = "198.18.0.2"
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_PORT = 7400
DEFAULT_TIMEOUT = 10.0
MIN_SECRET_BYTES = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_KEYS = {"directories", "port", "ack", "timeout", "resync_bandwidth", "nodes"}


class ConfigError(Exception):
    """A configuration problem, worded for the admin (file, key, what is wrong)."""


@dataclass(frozen=True)
class ModuleConfig:
    name: str
    directories: tuple[str, ...]
    nodes: dict[str, str]  # name -> address, exactly two
    port: int = DEFAULT_PORT
    ack: str = "applied"
    timeout: float = DEFAULT_TIMEOUT
    resync_bandwidth: float | None = None  # MiB/s
    source: str = ""

    def peer_of(self, node: str) -> tuple[str, str]:
        """(name, address) of the other node, for ``node`` one of this module's nodes."""
        if node not in self.nodes:
            known = ", ".join(sorted(self.nodes))
            raise ConfigError(
                f"{self.source}: nodes: this node is {node!r}, which is not one of {known} "
                "(give --node, or name the nodes after their hostnames)"
            )
        (other,) = (name for name in self.nodes if name != node)
        return other, self.nodes[other]

    def port_of(self, index: int) -> int:
        return self.port + index


def _fail(source: str, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {problem}")


def _describe(value: Any) -> str:
    return f"{type(value).__name__} {value!r}"


def check_name(name: str, what: str = "module name") -> str:
    if not _NAME.match(name):
        raise ConfigError(
            f"{what} {name!r} must be 1-63 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


def _directories(source: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise _fail(
            source, "directories", f"must be a non-empty list of paths, got {_describe(value)}"
        )
    paths: list[str] = []
    for index, item in enumerate(value):
        key = f"directories[{index}]"
        if not isinstance(item, str):
            raise _fail(source, key, f"must be a string, got {_describe(item)}")
        if not item.startswith("/"):
            raise _fail(source, key, f"must be an absolute path, got {item!r}")
        normal = os.path.normpath(item)
        if normal == "/":
            raise _fail(source, key, "cannot be / (replicate application directories)")
        for earlier_index, earlier in enumerate(paths):
            if normal == earlier:
                raise _fail(source, key, f"{item!r} is listed twice")
            if normal.startswith(earlier + "/") or earlier.startswith(normal + "/"):
                raise _fail(
                    source,
                    key,
                    f"{item!r} and directories[{earlier_index}] {earlier!r} are nested; "
                    "list only the outer one",
                )
        paths.append(normal)
    return tuple(paths)


def _address(source: str, key: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise _fail(source, key, f"must be an IP address or host name, got {_describe(value)}")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _HOSTNAME.match(value):
            raise _fail(
                source, key, f"{value!r} is neither an IP address nor a host name"
            ) from None
    return value


def _nodes(source: str, value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise _fail(source, "nodes", f"must be a table of name = address, got {_describe(value)}")
    if len(value) != 2:
        raise _fail(source, "nodes", f"a mirror module has exactly two nodes, found {len(value)}")
    nodes: dict[str, str] = {}
    for name, address in value.items():
        try:
            check_name(name, "node name")
        except ConfigError as exc:
            raise _fail(source, f"nodes.{name}", str(exc)) from None
        nodes[name] = _address(source, f"nodes.{name}", address)
    if len(set(nodes.values())) != 2:
        raise _fail(source, "nodes", "both nodes have the same address")
    return nodes


def parse_module(name: str, text: str, source: str) -> ModuleConfig:
    check_name(name)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key (known: {', '.join(sorted(_KEYS))})")
    for required in ("directories", "nodes"):
        if required not in raw:
            raise _fail(source, required, "missing (required)")
    port = raw.get("port", DEFAULT_PORT)
    directories = _directories(source, raw["directories"])
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _fail(source, "port", f"must be an integer from 1 to 65535, got {_describe(port)}")
    if port + len(directories) - 1 > 65535:
        raise _fail(source, "port", f"{port} + {len(directories)} directories passes 65535")
    ack = raw.get("ack", "applied")
    if ack not in ("applied", "durable"):
        raise _fail(source, "ack", f'must be "applied" or "durable", got {_describe(ack)}')
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not timeout > 0:
        raise _fail(
            source, "timeout", f"must be a number of seconds above 0, got {_describe(timeout)}"
        )
    bandwidth = raw.get("resync_bandwidth")
    if bandwidth is not None and (
        isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or not bandwidth > 0
    ):
        raise _fail(
            source, "resync_bandwidth", f"must be MiB/s above 0, got {_describe(bandwidth)}"
        )
    return ModuleConfig(
        name=name,
        resync_bandwidth=None if bandwidth is None else float(bandwidth),
        directories=directories,
        nodes=_nodes(source, raw["nodes"]),
        port=port,
        ack=ack,
        timeout=float(timeout),
        source=source,
    )


def module_path(config_dir: str | Path, name: str) -> Path:
    return Path(config_dir) / "modules" / f"{check_name(name)}.toml"


def load_module(config_dir: str | Path, name: str) -> ModuleConfig:
    path = module_path(config_dir, name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such module file (module {name!r})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_module(name, text, str(path))


def read_secret(path: str | Path) -> bytes:
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"secret file {path} is readable by others: chmod 600 {path}")
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"secret file {path} holds {len(secret)} bytes; use at least {MIN_SECRET_BYTES}"
        )
    return secret
