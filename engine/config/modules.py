"""Module configuration: one TOML file per module, ``<config-dir>/modules/<name>.toml``, plus the
cluster secret ``<config-dir>/secret`` shared by every module.

Every problem is reported as ``FILE: KEY: problem`` so an admin can fix it without reading code::

    directories = ["/srv/app"]      # replicated in place; directory i uses port + i
    port = 7400                     # optional (default 7400)
    ack = "applied"                 # or "durable" (optional, default "applied")
    sync = "write"                  # or "fsync": writes return once sent, fsync waits for the peer
    timeout = 10.0                  # seconds without an answer before going on alone
    resync_bandwidth = 50.0         # optional: MiB/s a resync may send (default: no cap)
    default_primary = "alpha"       # optional: serves when both copies are equally new
    vip = "198.18.0.100/24"         # optional: the address clients use, on the serving node
    vip_interface = "eth0"          # optional: default the interface holding the node's address
    health_port = 8399              # optional (cloud): HTTP 200 on the serving node, 503 elsewhere
    witness = ["198.18.0.254"]      # split-brain witnesses: "ADDRESS" (ping) or "ADDRESS:PORT"
    heartbeat_interval = 0.2        # seconds between heartbeats (UDP, on `port`)
    heartbeat_timeout = 1.0         # silence on every network before the peer is lost
    heartbeat_networks = [{alpha = "10.1.0.1", beta = "10.1.0.2"}]  # more than the nodes' own
    maxloop = 3                     # application restarts allowed within loop_interval
    loop_interval = 86400.0
    on_failure = "failover"         # beyond maxloop: "failover" (if the peer is in sync), "stop"
    script_timeout = 120.0          # start_prim/stop_prim (in <config-dir>/modules/<name>/)
    [[checker]]                     # any number: process, custom, tcp, ping, interface
    kind = "tcp"
    target = "127.0.0.1"
    port = 5432
    interval = 5.0                  # optional; timeout = 2.0 optional
    [nodes]                         # exactly two: node name = address
    alpha = "198.18.0.1"
    beta = "198.18.0.2"

The replication timeout must leave room for the heartbeat and the witness to decide first
(``timeout >= 2 * heartbeat_timeout + WITNESS_TIMEOUT``): a secondary learns that the stream
broke while the primary lives on before that primary may acknowledge writes alone.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

DEFAULT_PORT = 7400
DEFAULT_TIMEOUT = 10.0
# where a change waits for the peer: every write (the default), or only fsync & co. (D33)
SYNC_POINTS = ("write", "fsync")
MIN_SECRET_BYTES = 16
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)
_KEYS = {
    "directories",
    "port",
    "ack",
    "sync",
    "timeout",
    "resync_bandwidth",
    "nodes",
    "default_primary",
    "vip",
    "vip_interface",
    "health_port",
    "witness",
    "heartbeat_interval",
    "heartbeat_timeout",
    "heartbeat_networks",
    "maxloop",
    "loop_interval",
    "on_failure",
    "script_timeout",
    "checker",
}
# a module's scripts, in <config-dir>/modules/<name>/
SCRIPT_NAMES = ("start_prim", "stop_prim", "start_both", "stop_both")
CHECKER_KINDS = ("process", "custom", "tcp", "ping", "interface")
_CHECKER_KEYS = {"kind", "target", "port", "interval", "timeout"}
DEFAULT_HEARTBEAT_INTERVAL = 0.2
DEFAULT_HEARTBEAT_TIMEOUT = 1.0
WITNESS_TIMEOUT = 1.0

_T = TypeVar("_T")


class ConfigError(Exception):
    """A configuration problem, worded for the admin (file, key, what is wrong)."""


@dataclass(frozen=True)
class CheckerConfig:
    kind: str
    target: str
    port: int | None = None
    interval: float = 5.0
    timeout: float = 2.0


@dataclass(frozen=True)
class ModuleConfig:
    name: str
    directories: tuple[str, ...]
    nodes: dict[str, str]  # name -> address, exactly two
    port: int = DEFAULT_PORT
    ack: str = "applied"
    sync: str = "write"  # the sync point: what waits for the peer (SYNC_POINTS)
    timeout: float = DEFAULT_TIMEOUT
    resync_bandwidth: float | None = None  # MiB/s
    source: str = ""
    default_primary: str | None = None
    vip: str | None = None
    vip_interface: str | None = None
    health_port: int | None = None
    witnesses: tuple[tuple[str, int | None], ...] = ()
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    heartbeat_networks: tuple[dict[str, str], ...] = ()  # beyond the nodes' own addresses
    maxloop: int = 3
    loop_interval: float = 86400.0
    on_failure: str = "failover"
    script_timeout: float = 120.0
    checkers: tuple[CheckerConfig, ...] = ()

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


class _Problems:
    """Every mistake of a file, not just the first: each key is checked on its own and a bad
    one stands in with its default so the others can still be judged."""

    def __init__(self) -> None:
        self.found: list[str] = []

    def check(self, judge: Callable[[], _T], default: Any) -> _T:
        try:
            return judge()
        except ConfigError as exc:
            self.found.append(str(exc))
            return default

    def raise_any(self) -> None:
        if self.found:
            raise ConfigError("\n".join(self.found))


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
    """The module in ``text``; a ConfigError naming every mistake (one per line)."""
    check_name(name)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    problems = _Problems()
    for key in sorted(set(raw) - _KEYS):
        problems.found.append(
            str(_fail(source, key, f"unknown key (known: {', '.join(sorted(_KEYS))})"))
        )
    for required in ("directories", "nodes"):
        if required not in raw:
            problems.found.append(str(_fail(source, required, "missing (required)")))
    directories = problems.check(lambda: _directories(source, raw.get("directories", [])), ())
    port = problems.check(lambda: _stream_port(source, raw, len(directories)), DEFAULT_PORT)
    ack = problems.check(lambda: _ack(source, raw), "applied")
    sync = problems.check(lambda: _sync(source, raw), "write")
    timeout = problems.check(
        lambda: _seconds(source, "timeout", raw.get("timeout", DEFAULT_TIMEOUT)), DEFAULT_TIMEOUT
    )
    bandwidth = problems.check(lambda: _bandwidth(source, raw), None)
    nodes = (
        problems.check(lambda: _nodes(source, raw.get("nodes", {})), {}) if "nodes" in raw else {}
    )
    failover = _failover(source, raw, nodes, problems)
    problems.raise_any()
    return ModuleConfig(
        **failover,
        name=name,
        resync_bandwidth=bandwidth,
        directories=directories,
        nodes=nodes,
        port=port,
        ack=ack,
        sync=sync,
        timeout=timeout,
        source=source,
    )


def _stream_port(source: str, raw: dict[str, Any], directories: int) -> int:
    port = raw.get("port", DEFAULT_PORT)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise _fail(source, "port", f"must be an integer from 1 to 65535, got {_describe(port)}")
    if port + max(directories, 1) - 1 > 65535:
        raise _fail(source, "port", f"{port} + {directories} directories passes 65535")
    return port


def _ack(source: str, raw: dict[str, Any]) -> str:
    ack = raw.get("ack", "applied")
    if ack not in ("applied", "durable"):
        raise _fail(source, "ack", f'must be "applied" or "durable", got {_describe(ack)}')
    return str(ack)


def _sync(source: str, raw: dict[str, Any]) -> str:
    sync = raw.get("sync", "write")
    if sync not in SYNC_POINTS:
        raise _fail(source, "sync", f'must be "write" or "fsync", got {_describe(sync)}')
    return str(sync)


def _bandwidth(source: str, raw: dict[str, Any]) -> float | None:
    bandwidth = raw.get("resync_bandwidth")
    if bandwidth is None:
        return None
    if isinstance(bandwidth, bool) or not isinstance(bandwidth, int | float) or not bandwidth > 0:
        raise _fail(
            source, "resync_bandwidth", f"must be MiB/s above 0, got {_describe(bandwidth)}"
        )
    return float(bandwidth)


def _seconds(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _fail(source, key, f"must be a number of seconds above 0, got {_describe(value)}")
    return float(value)


def _port(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _fail(source, key, f"must be an integer from 1 to 65535, got {_describe(value)}")
    return value


def _witness(source: str, key: str, value: Any) -> tuple[str, int | None]:
    if not isinstance(value, str) or not value:
        raise _fail(source, key, f'must be "ADDRESS" or "ADDRESS:PORT", got {_describe(value)}')
    host, port = value, None
    if value.startswith("["):  # [IPv6]:PORT
        host, _, rest = value[1:].partition("]")
        if rest:
            port = _port(source, key, int(rest[1:])) if rest[1:].isdigit() else -1
    elif value.count(":") == 1:
        host, _, text = value.partition(":")
        port = _port(source, key, int(text)) if text.isdigit() else -1
    if port == -1:
        raise _fail(source, key, f"{value!r}: the port must be a number")
    return _address(source, key, host), port


def _checker(source: str, key: str, value: Any) -> CheckerConfig:
    if not isinstance(value, dict):
        raise _fail(source, key, f"must be a table, got {_describe(value)}")
    unknown = sorted(set(value) - _CHECKER_KEYS)
    if unknown:
        raise _fail(
            source,
            f"{key}.{unknown[0]}",
            f"unknown key (known: {', '.join(sorted(_CHECKER_KEYS))})",
        )
    kind = value.get("kind")
    if kind not in CHECKER_KINDS:
        raise _fail(
            source,
            f"{key}.kind",
            f"must be one of {', '.join(CHECKER_KINDS)}, got {_describe(kind)}",
        )
    target = value.get("target")
    if not isinstance(target, str) or not target:
        raise _fail(source, f"{key}.target", f"must be a non-empty string, got {_describe(target)}")
    if kind == "custom" and not target.startswith("/"):
        raise _fail(
            source, f"{key}.target", f"a custom checker is a script's absolute path, got {target!r}"
        )
    port = value.get("port")
    if kind == "tcp":
        if port is None:
            raise _fail(source, f"{key}.port", "missing (a tcp checker needs the port)")
        port = _port(source, f"{key}.port", port)
    elif port is not None:
        raise _fail(source, f"{key}.port", f"only a tcp checker has a port, not a {kind} one")
    return CheckerConfig(
        kind,
        target,
        port,
        _seconds(source, f"{key}.interval", value.get("interval", 5.0)),
        _seconds(source, f"{key}.timeout", value.get("timeout", 2.0)),
    )


def _failover(
    source: str, raw: dict[str, Any], nodes: dict[str, str], problems: _Problems
) -> dict[str, Any]:
    found: dict[str, Any] = {}
    found["default_primary"] = problems.check(lambda: _default_primary(source, raw, nodes), None)
    found["vip"] = problems.check(lambda: _vip(source, raw, nodes), None)
    found["vip_interface"] = problems.check(lambda: _vip_interface(source, raw), None)
    health = raw.get("health_port")
    found["health_port"] = problems.check(
        lambda: None if health is None else _port(source, "health_port", health), None
    )
    found["witnesses"] = problems.check(lambda: _witnesses(source, raw), ())
    interval = problems.check(
        lambda: _seconds(
            source, "heartbeat_interval", raw.get("heartbeat_interval", DEFAULT_HEARTBEAT_INTERVAL)
        ),
        DEFAULT_HEARTBEAT_INTERVAL,
    )
    silence = problems.check(
        lambda: _seconds(
            source, "heartbeat_timeout", raw.get("heartbeat_timeout", DEFAULT_HEARTBEAT_TIMEOUT)
        ),
        DEFAULT_HEARTBEAT_TIMEOUT,
    )
    if interval >= silence:
        problems.found.append(
            str(
                _fail(
                    source,
                    "heartbeat_interval",
                    f"{interval:g} s must be shorter than heartbeat_timeout ({silence:g} s)",
                )
            )
        )
    found["heartbeat_interval"], found["heartbeat_timeout"] = interval, silence
    found["heartbeat_networks"] = problems.check(
        lambda: _heartbeat_networks(source, raw, nodes), ()
    )
    found["maxloop"] = problems.check(lambda: _maxloop(source, raw), 3)
    found["loop_interval"] = problems.check(
        lambda: _seconds(source, "loop_interval", raw.get("loop_interval", 86400.0)), 86400.0
    )
    found["on_failure"] = problems.check(lambda: _on_failure(source, raw), "failover")
    found["script_timeout"] = problems.check(
        lambda: _seconds(source, "script_timeout", raw.get("script_timeout", 120.0)), 120.0
    )
    checkers = raw.get("checker", [])
    if not isinstance(checkers, list):
        problems.found.append(
            str(_fail(source, "checker", f"must be [[checker]] tables, got {_describe(checkers)}"))
        )
        checkers = []
    parsed: list[CheckerConfig | None] = []
    for index, item in enumerate(checkers):

        def judge(i: int = index, c: Any = item) -> CheckerConfig | None:
            return _checker(source, f"checker[{i}]", c)

        parsed.append(problems.check(judge, None))
    found["checkers"] = tuple(c for c in parsed if c is not None)
    return found


def _default_primary(source: str, raw: dict[str, Any], nodes: dict[str, str]) -> str | None:
    default_primary = raw.get("default_primary")
    if default_primary is not None and default_primary not in nodes:
        raise _fail(
            source,
            "default_primary",
            f"must be one of the nodes ({', '.join(nodes)}), got {_describe(default_primary)}",
        )
    return default_primary


def _vip(source: str, raw: dict[str, Any], nodes: dict[str, str]) -> str | None:
    vip = raw.get("vip")
    if vip is None:
        return None
    try:
        interface = ipaddress.ip_interface(vip) if isinstance(vip, str) and "/" in vip else None
    except ValueError:
        interface = None
    if interface is None:
        raise _fail(
            source,
            "vip",
            f'must be "ADDRESS/PREFIX" (e.g. "10.0.0.100/24"), got {_describe(vip)}',
        )
    if str(interface.ip) in nodes.values():
        raise _fail(source, "vip", f"{interface.ip} is a node's own address")
    return str(vip)


def _vip_interface(source: str, raw: dict[str, Any]) -> str | None:
    vip_interface = raw.get("vip_interface")
    if vip_interface is not None and (not isinstance(vip_interface, str) or not vip_interface):
        raise _fail(
            source, "vip_interface", f"must be an interface name, got {_describe(vip_interface)}"
        )
    if vip_interface is not None and raw.get("vip") is None:
        raise _fail(source, "vip_interface", "given without a vip")
    return vip_interface


def _witnesses(source: str, raw: dict[str, Any]) -> tuple[tuple[str, int | None], ...]:
    witness = raw.get("witness", [])
    if isinstance(witness, str):
        witness = [witness]
    if not isinstance(witness, list):
        raise _fail(source, "witness", f"must be a list of addresses, got {_describe(witness)}")
    return tuple(_witness(source, f"witness[{index}]", item) for index, item in enumerate(witness))


def _heartbeat_networks(
    source: str, raw: dict[str, Any], nodes: dict[str, str]
) -> tuple[dict[str, str], ...]:
    networks = raw.get("heartbeat_networks", [])
    if not isinstance(networks, list):
        raise _fail(
            source, "heartbeat_networks", f"must be a list of tables, got {_describe(networks)}"
        )
    parsed = []
    for index, network in enumerate(networks):
        key = f"heartbeat_networks[{index}]"
        if not isinstance(network, dict) or set(network) != set(nodes):
            raise _fail(
                source,
                key,
                f"must give an address for each node ({', '.join(nodes)}), "
                f"got {_describe(network)}",
            )
        parsed.append({node: _address(source, f"{key}.{node}", network[node]) for node in nodes})
    return tuple(parsed)


def _maxloop(source: str, raw: dict[str, Any]) -> int:
    maxloop = raw.get("maxloop", 3)
    if isinstance(maxloop, bool) or not isinstance(maxloop, int) or maxloop < 0:
        raise _fail(source, "maxloop", f"must be an integer of 0 or more, got {_describe(maxloop)}")
    return maxloop


def _on_failure(source: str, raw: dict[str, Any]) -> str:
    on_failure = raw.get("on_failure", "failover")
    if on_failure not in ("failover", "stop"):
        raise _fail(
            source, "on_failure", f'must be "failover" or "stop", got {_describe(on_failure)}'
        )
    return str(on_failure)


def check_failover_timing(module: ModuleConfig) -> None:
    """For a module the node fails over (not one given a fixed role): the heartbeat and the
    witness must decide before replication gives up on a silent peer."""
    least = 2 * module.heartbeat_timeout + WITNESS_TIMEOUT
    if module.timeout < least:
        raise _fail(
            module.source,
            "timeout",
            f"{module.timeout:g} s is too short for heartbeat_timeout "
            f"{module.heartbeat_timeout:g} s: at least 2 x heartbeat_timeout + "
            f"{WITNESS_TIMEOUT:g} s = {least:g} s, so that the heartbeat decides before "
            "replication gives up on the peer",
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
