"""What is checked before a node starts its modules, so that a mistake is found by `tandem
check` or at start — every one at once, each a clear line — never at failover time.

`conflicts` is pure: modules that would fight over a directory, a port or a VIP. `environment`
looks at this node: directories, scripts, checkers' targets, the VIP's interface and subnet,
names that must resolve.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tandem.engine.config.modules import SCRIPT_NAMES, ConfigError, ModuleConfig, load_module


@dataclass
class Findings:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _nested(a: str, b: str) -> bool:
    return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")


def _ports(module: ModuleConfig) -> set[int]:
    """Every port number the module takes on its nodes: a TCP port per directory (the first is
    also the heartbeat's UDP port) and the health probe's."""
    taken = set(range(module.port, module.port + len(module.directories)))
    if module.health_port is not None:
        taken.add(module.health_port)
    return taken


def conflicts(modules: Sequence[ModuleConfig]) -> list[str]:
    """Pairs of modules that cannot run side by side on a node, worded for the admin."""
    found = []
    for index, first in enumerate(modules):
        for one, two in _pairs(first.directories):
            if _nested(one, two):
                found.append(f"{first.source}: directories: {one} and {two} overlap")
        if first.health_port is not None and first.health_port in range(
            first.port, first.port + len(first.directories)
        ):
            found.append(
                f"{first.source}: health_port: {first.health_port} is one of the module's "
                "replication ports"
            )
        for second in modules[index + 1 :]:
            pair = f"modules {first.name} ({first.source}) and {second.name} ({second.source})"
            for mine in first.directories:
                for theirs in second.directories:
                    if mine == theirs:
                        found.append(f"{pair} both replicate {mine}")
                    elif _nested(mine, theirs):
                        found.append(f"{pair} replicate nested directories {mine} and {theirs}")
            shared = sorted(_ports(first) & _ports(second))
            if shared:
                ports = ", ".join(map(str, shared))
                found.append(f"{pair} both use port {ports} (give each its own port range)")
            if first.vip and second.vip and _ip(first.vip) == _ip(second.vip):
                found.append(f"{pair} both hold the VIP {_ip(first.vip)}")
    return found


def _pairs(items: Sequence[str]) -> list[tuple[str, str]]:
    return [(a, b) for i, a in enumerate(items) for b in items[i + 1 :]]


def _ip(vip: str) -> str:
    return str(ipaddress.ip_interface(vip).ip)


def environment(
    module: ModuleConfig, node: str, *, failover: bool, starting: bool = True
) -> Findings:
    """What this node must offer the module. ``failover``: the node will fail it over (not a
    fixed role), so its scripts, checkers and VIP will be used. ``starting``: this machine is
    the node (`tandem node`); `tandem check` may also run elsewhere, where what only the node
    can tell is a warning."""
    findings = Findings()
    for directory in module.directories:
        if not os.path.isdir(directory):
            findings.errors.append(f"{module.source}: directories: {directory} is not a directory")
    for name, address in _addresses(module):
        problem = _unresolvable(address)
        if problem:
            findings.errors.append(
                f"{module.source}: {name}: {address} does not resolve ({problem})"
            )
    if failover:
        _scripts(module, findings)
        _checkers(module, findings)
        _vip_subnet(module, node, findings, starting=starting)
    return findings


def _addresses(module: ModuleConfig) -> list[tuple[str, str]]:
    named = [(f"nodes.{name}", address) for name, address in module.nodes.items()]
    named += [(f"witness[{i}]", host) for i, (host, _) in enumerate(module.witnesses)]
    for index, network in enumerate(module.heartbeat_networks):
        named += [(f"heartbeat_networks[{index}].{n}", a) for n, a in network.items()]
    return named


def _unresolvable(address: str) -> str:
    try:
        ipaddress.ip_address(address)
        return ""
    except ValueError:
        pass
    try:
        socket.getaddrinfo(address, None)
    except (socket.gaierror, UnicodeError) as exc:
        return str(exc.args[-1]) if exc.args else "unknown host"
    return ""


def scripts_dir(module: ModuleConfig) -> Path:
    return Path(os.path.dirname(module.source)) / module.name


def _scripts(module: ModuleConfig, findings: Findings) -> None:
    where = scripts_dir(module)
    present = sorted(os.listdir(where)) if where.is_dir() else []
    for name in present:
        path = where / name
        if name not in SCRIPT_NAMES:
            findings.errors.append(
                f"{path}: not a script name Tandem runs (known: {', '.join(SCRIPT_NAMES)})"
            )
        elif not _executable(path):
            findings.errors.append(f"{path}: not an executable file (chmod +x {path})")
    if "start_prim" not in present:
        findings.warnings.append(
            f"{where}/start_prim: missing: nothing starts the application where the module serves"
        )


def _executable(path: Path) -> bool:
    try:
        st = path.stat()
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and os.access(path, os.X_OK)


def _checkers(module: ModuleConfig, findings: Findings) -> None:
    for index, checker in enumerate(module.checkers):
        key = f"{module.source}: checker[{index}].target"
        if checker.kind == "custom" and not _executable(Path(checker.target)):
            findings.errors.append(f"{key}: {checker.target} is not an executable file")
        if checker.kind == "interface" and not os.path.exists(f"/sys/class/net/{checker.target}"):
            findings.errors.append(f"{key}: no network interface {checker.target!r} on this node")


def _vip_subnet(module: ModuleConfig, node: str, findings: Findings, *, starting: bool) -> None:
    if module.vip is None:
        return
    # only here: pyroute2 stays out of the commands that do not need it (`tandem mount`)
    from tandem.vip import address as vip_address

    key = f"{module.source}: vip"
    try:
        interface = module.vip_interface or vip_address.interface_of(module.nodes[node])
    except vip_address.VipError as exc:
        if starting:
            findings.errors.append(f"{key}: {exc}")
        else:
            findings.warnings.append(f"{key}: not checked on this machine ({exc})")
        return
    try:
        networks = vip_address.networks_of(interface)
    except vip_address.VipError as exc:
        findings.errors.append(f"{key}: {exc}")
        return
    vip = ipaddress.ip_interface(module.vip)
    if not any(vip.ip in network for network in networks):
        shown = ", ".join(map(str, networks)) or "no address"
        findings.errors.append(
            f"{key}: {vip.ip} is outside the subnet of {interface} ({shown}): "
            "neighbours would not reach it"
        )


def preflight(
    modules: Sequence[ModuleConfig],
    node: str,
    *,
    failover: Sequence[bool] | None = None,
    starting: bool = True,
) -> Findings:
    """Every finding for these modules on ``node`` (``failover[i]``: module i is failed over;
    default all)."""
    findings = Findings(errors=conflicts(modules))
    for index, module in enumerate(modules):
        try:
            module.peer_of(node)
        except ConfigError as exc:
            findings.errors.append(str(exc))
            continue
        fails_over = True if failover is None else failover[index]
        found = environment(module, node, failover=fails_over, starting=starting)
        findings.errors += found.errors
        findings.warnings += found.warnings
    return findings


def load_modules(config_dir: str | Path, names: Sequence[str]) -> list[ModuleConfig]:
    """Each named module; a ConfigError naming every mistake of every file."""
    loaded, problems = [], []
    for name in names:
        try:
            loaded.append(load_module(config_dir, name))
        except ConfigError as exc:
            problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return loaded


def module_names(config_dir: str | Path) -> list[str]:
    """Every module the configuration directory defines."""
    modules_dir = Path(config_dir) / "modules"
    try:
        files = os.listdir(modules_dir)
    except OSError as exc:
        raise ConfigError(f"cannot list {modules_dir}: {exc.strerror}") from None
    return sorted(f.removesuffix(".toml") for f in files if f.endswith(".toml"))
