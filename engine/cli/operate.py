"""`tandem state`, `tandem verify`, `tandem resync --full`: the operator's side of the control
sockets each stream's process serves (`tandem.engine.control.channel`).

The JSON shape of `tandem state --json` is documented in docs/operate.md and kept stable:
fields are added, never renamed or removed, and ``version`` changes if that ever must happen.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tandem.engine.api.report import node_report, stream_indexes
from tandem.engine.cli.common import EXIT_FAILED, EXIT_OK, state_dir_option
from tandem.engine.cli.tail import line_count, show_tail
from tandem.engine.config.modules import ConfigError, check_name
from tandem.engine.config.paths import (
    DEFAULT_API_PORT,
    DEFAULT_CONFIG_DIR,
    app_log,
    control_socket,
    default_config_dir,
    module_log,
    module_socket,
)
from tandem.engine.control.channel import ControlError, ask

MODULE_COMMANDS = {
    "start": "start a stopped module on this node (it serves or follows as the peer decides)",
    "stop": "stop the module on this node (an up-to-date peer takes over)",
    "restart": "stop then start the module on this node",
    "swap": "hand the serving role to the peer (in sync first; no acknowledged write lost)",
    "prim": "make this node serve the module (refused if its copy may be stale, unless --force)",
    "second": "step down: the up-to-date peer serves, this node follows",
}


def show_state(state_dir: str, wanted: list[str], *, as_json: bool) -> int:
    report, complete = node_report(state_dir, wanted)
    modules = list(report["modules"])
    if as_json:
        print(json.dumps(report, indent=2))
    elif not modules:
        print(f"no module has run on this node (state directory {state_dir})")
    else:
        for module, found in report["modules"].items():
            if found["failover"] is not None:
                print(f"{module}: {describe_failover(found['failover'])}")
            elif not found["streams"]:
                print(f"{module}: never ran on this node")
            for stream in found["streams"]:
                print(f"{module}/{stream['index']} {describe_stream(stream)}")
    return EXIT_OK if complete else EXIT_FAILED


def _duration(seconds: float) -> str:
    """``4.2 s``, ``3 min 5 s``, ``2 h 7 min``: as precise as an operator reads it."""
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, rest = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days {hours % 24} h"


def describe_failover(failover: dict[str, Any]) -> str:
    if not failover["running"]:
        return f"not running on this node ({failover['reason']})"
    text = f"{failover['state']} on {failover['node']}"
    if failover.get("for_s") is not None:
        text += f" for {_duration(failover['for_s'])}"
    text += f" ({failover['reason']})"
    if failover.get("vip"):
        text += f"; VIP {failover['vip']} {'here' if failover['vip_held'] else 'not here'}"
    peer = failover["peer"]
    heartbeat = peer["heartbeat"]["verdict"]
    if peer["state"]:
        heard = peer.get("heard_s_ago")
        age = f", as heard {_duration(heard)} ago" if heard is not None and heard >= 1 else ""
        text += (
            f"\n  peer {peer['node']}: {peer['state']} ({peer['reason']}){age}; "
            f"heartbeat {heartbeat}"
        )
    elif peer.get("last_state"):
        text += (
            f"\n  peer {peer['node']}: not heard for {_duration(peer['heard_s_ago'])} (last"
            f" heard {peer['last_state']}; heartbeat {heartbeat})"
        )
    else:
        text += f"\n  peer {peer['node']}: not heard (heartbeat {heartbeat})"
    return text


def module_command(
    state_dir: str,
    module: str,
    command: str,
    *,
    config_dir: str = DEFAULT_CONFIG_DIR,
    api_port: int = DEFAULT_API_PORT,
    **arguments: Any,
) -> int:
    check_name(module)
    path = module_socket(state_dir, module)
    if not Path(path).exists():
        raise ConfigError(
            f"module {module!r} is not run with failover on this node ({path} is missing; "
            "is the node running, and the module configured?)"
        )
    try:
        answer = ask(path, command, timeout=None, **arguments)
    except ControlError as exc:
        if command != "swap" or not str(exc).startswith("this node does not serve"):
            raise
        # the serving node hands over: a swap asked here is carried out there
        node, answer = _swap_on_peer(state_dir, config_dir, module, api_port)
        print(f"{module}: swapped on {node}, which served: {describe_failover(answer)}")
        return EXIT_OK
    print(f"{module}: {describe_failover({'running': True, **answer})}")
    return EXIT_OK


def _swap_on_peer(
    state_dir: str, config_dir: str, module: str, api_port: int
) -> tuple[str, dict[str, Any]]:
    from tandem.engine.api.forward import ForwardError, ask_peer
    from tandem.engine.config.preflight import load_modules
    from tandem.engine.config.secrets import load_keyring, secret_path

    here = ask(module_socket(state_dir, module), "state")
    peer = here["peer"]["node"]
    if here["peer"].get("state") not in ("PRIM", "ALONE"):
        raise ConfigError(
            f"this node does not serve ({here['state']}), and neither does {peer} "
            f"({here['peer'].get('state') or 'not heard'}): nothing to swap"
        )
    (config,) = load_modules(config_dir, [module])
    secret = load_keyring(secret_path(config_dir)).signing
    target = f"/api/v1/modules/{module}/swap"
    try:
        status, answer = ask_peer(secret, config.nodes[peer], api_port, "POST", target, {})
    except ForwardError as exc:
        raise ConfigError(f"{exc}; run `tandem swap {module}` on {peer}") from None
    if status != 200:
        raise ConfigError(f"{peer}: {answer.get('error', status)}")
    return peer, {"running": True, **answer["failover"]}


def show_log(state_dir: str, module: str, *, app: bool, lines: int, follow: bool = False) -> int:
    check_name(module)
    path = app_log(state_dir, module) if app else module_log(state_dir, module)
    try:
        show_tail(Path(path), lines, follow)
    except FileNotFoundError:
        raise ConfigError(f"no {'application' if app else 'module'} log yet ({path})") from None
    return EXIT_OK


def describe_stream(stream: dict[str, Any]) -> str:
    if not stream.get("running"):
        return f"not running on this node ({stream.get('reason')})"
    where = f"{stream['directory']}: {stream['role']} on {stream['node']}"
    replication = stream["replication"]
    if stream["role"] == "secondary":
        primary = f" (primary {stream['peer']})" if stream.get("peer") else ""
        text = f"{where}, {replication}{primary}, {stream['applied']} mutations applied"
        if stream.get("resync"):
            text += f": {stream['resync']['how']}; {progress_text(stream['resync'])}"
        return text
    if replication == "alone":
        text = f"{where}, ALONE: {stream['reason']}"
        if stream.get("full_resync_pending"):
            text += " (a full resync is pending)"
        return text
    text = f"{where}, {replication} with {stream['peer']}"
    if stream.get("sync") == "fsync":
        # not the default: an admin reading this must know writes do not wait for the peer
        text += ", writes wait for it only at fsync"
    resync = stream.get("resync")
    if resync:
        text += f": {resync['how']}; {progress_text(resync)}"
    elif stream.get("last_resync"):
        last = stream["last_resync"]
        text += (
            f" (last resync: {last['how']}, {last['elapsed_s']:.1f} s, "
            f"{_size(last['bytes_sent'])} sent)"
        )
    verify = stream.get("verify")
    if verify and not verify.get("finished"):
        text += f"; verifying: {_size(verify['bytes_compared'])} compared"
    waiting = stream.get("writes_waiting", 0)
    if waiting:
        text += f"; {waiting} write{'s' if waiting > 1 else ''} waiting for the peer"
    return text


def progress_text(progress: dict[str, Any]) -> str:
    total = progress.get("bytes_total")
    done = progress["bytes_done"]
    parts = []
    if total:
        parts.append(f"{100 * done / total:.0f}% ({_size(done)} of {_size(total)})")
    else:
        parts.append(f"{_size(done)} done (total being counted)")
    parts.append(f"{progress['paths_done']}/{progress['paths_total']} paths")
    parts.append(f"{_size(progress['rate_bytes_s'])}/s")
    if progress.get("eta_s") is not None:
        parts.append(f"ETA {progress['eta_s']:.0f} s")
    return ", ".join(parts)


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError


def _known_streams(state_dir: str, module: str) -> list[int]:
    check_name(module)
    streams = stream_indexes(state_dir, module)
    if not streams:
        raise ConfigError(f"module {module!r} never ran on this node (state directory {state_dir})")
    return streams


def run_verify(state_dir: str, module: str, *, as_json: bool) -> int:
    reports = {}
    identical = True
    for index in _known_streams(state_dir, module):
        try:
            report = ask(control_socket(state_dir, module, index), "verify", timeout=None)
        except ControlError as exc:
            report = {"identical": False, "error": str(exc)}
        reports[f"{module}/{index}"] = report
        identical = identical and bool(report.get("identical"))
    if as_json:
        print(json.dumps({"identical": identical, "streams": reports}, indent=2))
    else:
        for name, report in reports.items():
            print(f"{name}: {_verify_text(report)}")
            for path, what in report.get("differences", {}).items():
                print(f"  {path}: {what}")
            for path in report.get("not_verified", []):
                print(f"  {path}: not verified (changed at every look)")
    return EXIT_OK if identical else EXIT_FAILED


def _verify_text(report: dict[str, Any]) -> str:
    if "error" in report:
        return f"not verified: {report['error']}"
    measured = (
        f"{report['paths_checked']} paths, {_size(report['bytes_compared'])} compared in "
        f"{report['elapsed_s']:.1f} s ({_size(report['rate_bytes_s'])}/s)"
    )
    if report["identical"]:
        return f"identical ({measured})"
    unverified = len(report["not_verified"])
    return (
        f"{report['difference_count']} difference(s)"
        + (f", {unverified} path(s) not verified" if unverified else "")
        + f" ({measured}); `tandem resync --full` repairs them"
    )


def start_full_resync(state_dir: str, module: str) -> int:
    for index in _known_streams(state_dir, module):
        answer = ask(control_socket(state_dir, module, index), "resync", full=True)
        print(f"{module}/{index}: {answer['message']}")
    return EXIT_OK


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state = commands.add_parser(
        "state",
        help="each module's replication on this node: in sync, resyncing (with progress), alone",
        description="Exit code 0 when every module found answered, 1 otherwise.",
    )
    state.set_defaults(run=lambda a: show_state(a.state_dir, a.modules, as_json=a.json))
    state.add_argument("modules", nargs="*", metavar="MODULE", help="default: every module")
    state.add_argument("--json", action="store_true", help="print the documented JSON shape")
    state_dir_option(state)

    verify = commands.add_parser(
        "verify",
        help="compare both copies block by block while the application runs; changes nothing",
        description="Run on the primary. Exit code 0: identical; 1: differences (listed), or "
        "the verify could not run.",
    )
    verify.set_defaults(run=lambda a: run_verify(a.state_dir, a.module, as_json=a.json))
    verify.add_argument("module", metavar="MODULE")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    state_dir_option(verify)

    resync = commands.add_parser(
        "resync",
        help="force a complete comparison of both copies (after a suspected divergence)",
        description="Run on the primary. The connection to the secondary starts over and "
        "compares every file by hashes, sending only what differs.",
    )
    resync.set_defaults(run=lambda a: start_full_resync(a.state_dir, a.module))
    resync.add_argument("module", metavar="MODULE")
    resync.add_argument(
        "--full", action="store_true", required=True, help="compare everything (required)"
    )
    state_dir_option(resync)

    for name, text in MODULE_COMMANDS.items():
        command = commands.add_parser(name, help=text)
        command.set_defaults(run=_run_module_command)
        command.add_argument("module", metavar="MODULE")
        if name == "prim":
            command.add_argument(
                "--force",
                action="store_true",
                help="serve this copy even if it is not known to be up to date (writes the peer "
                "acknowledged after this copy fell behind are lost)",
            )
        state_dir_option(command)
        if name == "swap":
            command.add_argument(
                "--config-dir",
                default=default_config_dir(),
                metavar="DIR",
                help="where the module file and secret are (to ask the serving node)",
            )
            command.add_argument(
                "--api-port",
                type=int,
                default=DEFAULT_API_PORT,
                help=f"the serving node's API port (default {DEFAULT_API_PORT})",
            )

    logs = commands.add_parser(
        "logs",
        help="the module log (every state change and why), or with --app the scripts' output",
    )
    logs.set_defaults(
        run=lambda a: show_log(a.state_dir, a.module, app=a.app, lines=a.lines, follow=a.follow)
    )
    logs.add_argument("module", metavar="MODULE")
    logs.add_argument("--app", action="store_true", help="the application log instead")
    logs.add_argument(
        "-n",
        "--lines",
        type=line_count,
        default=100,
        help="how many last lines (100; 0: the whole log)",
    )
    logs.add_argument("-f", "--follow", action="store_true", help="then print what follows")
    state_dir_option(logs)


def _run_module_command(args: argparse.Namespace) -> int:
    extra: dict[str, Any] = {"force": True} if getattr(args, "force", False) else {}
    if args.command == "swap":
        extra.update(config_dir=args.config_dir, api_port=args.api_port)
    return module_command(args.state_dir, args.module, args.command, **extra)
