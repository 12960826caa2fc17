"""The `tandem` command. Exit codes: 0 success, 1 the operation failed, 2 bad usage."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence

import trio

from tandem.engine import __version__
from tandem.engine.cli.operate import (
    MODULE_COMMANDS,
    module_command,
    run_verify,
    show_log,
    show_state,
    start_full_resync,
)
from tandem.engine.config.modules import (
    ConfigError,
    ModuleConfig,
    check_failover_timing,
    load_module,
    read_secret,
)
from tandem.engine.config.paths import DEFAULT_STATE_DIR, STATE_DIR_VARIABLE, default_state_dir
from tandem.engine.control.channel import ControlError, Handler, serve_control
from tandem.engine.lab.lab import NODES, Lab, LabError
from tandem.engine.node.systemd import unit_text
from tandem.engine.protocol.connection import AckKind, Identity
from tandem.engine.reintegration.journal import ChangeJournal, SecondaryJournal
from tandem.engine.replication.commands import primary_commands, secondary_commands
from tandem.engine.replication.receiver import Receiver, secondary_copy
from tandem.engine.replication.replicator import PeerAddress, Replicator
from tandem.fsdriver.change import NO_RECORDER
from tandem.fsdriver.mount import MountError, MountOptions, check_target, run_mount
from tandem.fsdriver.mutation import FileRecordingSink, NullSink, ReplicationSink

EXIT_FAILED = 1
EXIT_USAGE = 2
DEFAULT_CONFIG_DIR = "/etc/tandem"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be zero or more")
    return value


def _peer(text: str) -> PeerAddress:
    try:
        return PeerAddress.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replication_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secret-file",
        metavar="FILE",
        help="the cluster secret both nodes share (readable by root only)",
    )
    parser.add_argument(
        "--ack",
        choices=["applied", "durable"],
        default="applied",
        help="answer a write once the secondary applied it (default) or also fsync'd it",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="stop waiting for a silent peer after this long and go on alone (default 10)",
    )
    parser.add_argument(
        "--journal",
        metavar="DIR",
        help="this copy's journal directory: on a primary, where the copy may come to differ "
        "from its peer's, recorded before each change; on a secondary, which state it shares "
        "with the primary. With it, a reconnection resyncs only what changed "
        "(docs/architecture.md D16)",
    )
    parser.add_argument(
        "--control",
        metavar="SOCKET",
        help="answer `tandem state/verify/resync` on this Unix socket (created mode 0600)",
    )
    parser.add_argument("--module", default="default", help="module name (both sides)")
    parser.add_argument("--node", default=socket.gethostname(), help="this node's name")


def _secret(path: str | None) -> bytes:
    if path is None:
        raise ConfigError("replication needs --secret-file")
    return read_secret(path)


ROLES = ("primary", "secondary")


def _assignment(text: str) -> tuple[str, str | None]:
    name, sep, role = text.partition("=")
    roles = {role: role for role in ROLES}
    if not name or (sep and role not in roles):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODULE (failed over), MODULE=primary or MODULE=secondary"
        )
    return name, roles[role] if sep else None


def _node_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir",
        default=DEFAULT_CONFIG_DIR,
        metavar="DIR",
        help=f"holds modules/NAME.toml and the cluster secret (default {DEFAULT_CONFIG_DIR})",
    )
    parser.add_argument(
        "--node", default=socket.gethostname(), help="this node's name (default: hostname)"
    )


def _state_dir_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--state-dir",
        default=default_state_dir(),
        metavar="DIR",
        help=f"journals and control sockets (default ${STATE_DIR_VARIABLE} or {DEFAULT_STATE_DIR})",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tandem", description="Shared-nothing high availability.")
    parser.add_argument("--version", action="version", version=f"tandem {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount",
        help="mount the replicating passthrough over DIR, in place, in the foreground",
        description="Mount over DIR itself (its content stays where it is) until SIGINT/SIGTERM.",
    )
    mount.add_argument("directory", metavar="DIR")
    mount.add_argument(
        "--record",
        metavar="FILE",
        help="append every mutation to FILE as JSON lines (what a peer would receive)",
    )
    mount.add_argument(
        "--attr-timeout",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how long the kernel may cache attributes (default 1)",
    )
    mount.add_argument(
        "--entry-timeout",
        type=_positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how long the kernel may cache names (default 1)",
    )

    mount.add_argument(
        "--replicate-to",
        metavar="HOST:PORT",
        type=_peer,
        help="mirror every change synchronously to the secondary listening there",
    )
    mount.add_argument(
        "--wait-for-go",
        action="store_true",
        help="start, then wait for a line 'go' on stdin before mounting (end of input: exit 0). "
        "The node keeps one such child ready on a node that does not serve, so that taking "
        "over does not wait for Python to start",
    )
    mount.add_argument(
        "--retry",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="how often to try reconnecting a lost peer (default 2)",
    )
    mount.add_argument(
        "--resync-bandwidth",
        type=_positive_float,
        metavar="MIB_PER_S",
        help="cap the file data a resync sends (default: no cap; new writes are never capped)",
    )
    _replication_options(mount)

    receive = commands.add_parser(
        "receive",
        help="be the secondary for DIR: apply what the primary sends (DIR is read-only meanwhile)",
    )
    receive.add_argument("directory", metavar="DIR")
    receive.add_argument("--listen", metavar="HOST:PORT", type=_peer, required=True)
    _replication_options(receive)

    node = commands.add_parser(
        "node",
        help="run this node's modules in the foreground (the systemd unit runs this)",
        description="Run modules configured in CONFIG_DIR/modules/NAME.toml until SIGINT/SIGTERM. "
        "A module given by name fails over (heartbeat, virtual IP, scripts); MODULE=primary or "
        "MODULE=secondary fixes its role (replication only).",
    )
    node.add_argument("assignments", nargs="+", metavar="MODULE[=ROLE]", type=_assignment)
    _node_options(node)
    _state_dir_option(node)

    state = commands.add_parser(
        "state",
        help="each module's replication on this node: in sync, resyncing (with progress), alone",
        description="Exit code 0 when every module found answered, 1 otherwise.",
    )
    state.add_argument("modules", nargs="*", metavar="MODULE", help="default: every module")
    state.add_argument("--json", action="store_true", help="print the documented JSON shape")
    _state_dir_option(state)

    verify = commands.add_parser(
        "verify",
        help="compare both copies block by block while the application runs; changes nothing",
        description="Run on the primary. Exit code 0: identical; 1: differences (listed), or "
        "the verify could not run.",
    )
    verify.add_argument("module", metavar="MODULE")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    _state_dir_option(verify)

    resync = commands.add_parser(
        "resync",
        help="force a complete comparison of both copies (after a suspected divergence)",
        description="Run on the primary. The connection to the secondary starts over and "
        "compares every file by hashes, sending only what differs.",
    )
    resync.add_argument("module", metavar="MODULE")
    resync.add_argument(
        "--full", action="store_true", required=True, help="compare everything (required)"
    )
    _state_dir_option(resync)

    for name, text in MODULE_COMMANDS.items():
        command = commands.add_parser(name, help=text)
        command.add_argument("module", metavar="MODULE")
        if name == "prim":
            command.add_argument(
                "--force",
                action="store_true",
                help="serve this copy even if it is not known to be up to date (writes the peer "
                "acknowledged after this copy fell behind are lost)",
            )
        _state_dir_option(command)

    logs = commands.add_parser(
        "logs",
        help="the module log (every state change and why), or with --app the scripts' output",
    )
    logs.add_argument("module", metavar="MODULE")
    logs.add_argument("--app", action="store_true", help="the application log instead")
    logs.add_argument("-n", "--lines", type=int, default=100, help="how many last lines (100)")
    _state_dir_option(logs)

    unit = commands.add_parser(
        "unit",
        help="print a systemd unit running the node for these modules "
        "(tandem unit web db > /etc/systemd/system/tandem.service)",
    )
    unit.add_argument("modules", nargs="+", metavar="MODULE")
    unit.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, metavar="DIR")
    _state_dir_option(unit)

    check = commands.add_parser(
        "check",
        help="validate module configuration files and the secret, then say what they define",
    )
    check.add_argument("modules", nargs="*", metavar="MODULE", help="default: every module")
    _node_options(check)

    lab = commands.add_parser(
        "lab",
        help="a throwaway two-node cluster on this machine (network + mount namespaces)",
        description="Nodes a (primary) and b (secondary) replicating one directory, each in "
        "its own namespaces, so the directory has the same path on both.",
    )
    lab.add_argument(
        "--dir", metavar="DIR", help="where the lab lives (default /var/lib/tandem-lab)"
    )
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    lab_up = lab_commands.add_parser("up", help="create the nodes, start the demo module")
    lab_up.add_argument("--ack", choices=["applied", "durable"], default="applied")
    lab_up.add_argument(
        "--heartbeat",
        nargs=2,
        type=_positive_float,
        metavar=("INTERVAL", "TIMEOUT"),
        help="heartbeat interval and timeout in seconds (default 0.2 1.0)",
    )
    lab_up.add_argument(
        "--static",
        action="store_true",
        help="fixed roles (a primary, b secondary): replication without failover",
    )
    lab_up.add_argument(
        "--timeout",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="the module's peer timeout (default 5)",
    )
    lab_exec = lab_commands.add_parser(
        "exec", help="run a command on a node, in its namespaces (exit code kept)"
    )
    lab_exec.add_argument("node", metavar="NODE")
    lab_exec.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- COMMAND")
    lab_kill = lab_commands.add_parser("kill", help="crash a node: SIGKILL all its processes")
    lab_kill.add_argument("node", metavar="NODE")
    lab_start = lab_commands.add_parser(
        "start", help="boot a node again, its disk as the crash left it"
    )
    lab_start.add_argument("node", metavar="NODE")
    lab_start.add_argument(
        "--as",
        dest="role",
        choices=ROLES,
        help="a static lab's node: default its last role",
    )
    lab_cut = lab_commands.add_parser("cut", help="unplug a node's network cable")
    lab_cut.add_argument("node", metavar="NODE")
    lab_heal = lab_commands.add_parser(
        "heal", help="plug a node's cable back; without NODE: end the partition, plug every cable"
    )
    lab_heal.add_argument("node", metavar="NODE", nargs="?")
    lab_partition = lab_commands.add_parser(
        "partition",
        help="the two nodes stop reaching each other (the client still reaches both)",
    )
    lab_partition.add_argument(
        "--witness",
        choices=["a", "b", "both", "none"],
        default="both",
        help="which side still reaches the witness (default both)",
    )
    lab_commands.add_parser("status", help="what runs where")
    lab_commands.add_parser("down", help="remove every namespace, process and file of the lab")

    demo = commands.add_parser(
        "demo",
        help="the main job: a two-node lab, a database workload on the primary, a crash of "
        "the primary, and a check that the secondary holds every committed transaction",
    )
    demo.add_argument(
        "--workdir",
        metavar="DIR",
        help="where to create the demo (default: a new temporary directory)",
    )
    demo.add_argument("--keep", action="store_true", help="leave the lab up afterwards")
    return parser


def _cmd_mount(args: argparse.Namespace) -> int:
    if args.wait_for_go and sys.stdin.readline().strip() != "go":
        return 0  # not needed after all
    sink: ReplicationSink
    recorder = FileRecordingSink(args.record) if args.record else None
    journal = ChangeJournal(args.journal) if args.journal else None
    companion = None
    backing_fd = -1
    if args.replicate_to is not None:
        if recorder is not None:
            raise ConfigError("--record and --replicate-to cannot be combined")
        # the resync reads the copy itself, not through the mount: open it before the mount
        # hides it
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        backing_fd = os.open(check_target(args.directory), flags)
        replicator = Replicator(
            args.replicate_to,
            Identity(args.node, args.module),
            _secret(args.secret_file),
            ack=AckKind.DURABLE if args.ack == "durable" else AckKind.APPLIED,
            timeout=args.timeout,
            retry=args.retry,
            root_fd=backing_fd,
            journal=journal,
            bandwidth=args.resync_bandwidth * (1 << 20) if args.resync_bandwidth else None,
        )
        sink, companion = (
            replicator,
            _with_control(
                replicator.run, args.control, primary_commands(replicator, args.directory)
            ),
        )
    else:
        if args.control:
            raise ConfigError("--control needs --replicate-to (it reports on replication)")
        sink = recorder if recorder is not None else NullSink()
    options = MountOptions(attr_timeout=args.attr_timeout, entry_timeout=args.entry_timeout)
    try:
        outcome = run_mount(
            args.directory, sink, options, companion, journal if journal else NO_RECORDER
        )
    finally:
        if backing_fd >= 0:
            os.close(backing_fd)
        if recorder is not None:
            recorder.close()
        if journal is not None:
            journal.close()
    print(f"tandem: {args.directory}: {outcome}", file=sys.stderr)
    return 0


def _with_control(
    run: Callable[[], Awaitable[None]], control: str | None, commands: dict[str, Handler]
) -> Callable[[], Awaitable[None]]:
    if control is None:
        return run

    async def both() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, control, commands)
            await run()

    return both


def _cmd_receive(args: argparse.Namespace) -> int:
    secret = _secret(args.secret_file)
    with secondary_copy(args.directory) as root_fd:
        receiver = Receiver(
            root_fd,
            Identity(args.node, args.module),
            secret,
            durable=args.ack == "durable",
            handshake_timeout=args.timeout,
            journal=SecondaryJournal(args.journal) if args.journal else None,
        )

        async def serve() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receiver.serve, args.listen.host, args.listen.port)
                    if args.control:
                        commands = secondary_commands(receiver, args.directory)
                        nursery.start_soon(serve_control, args.control, commands)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

        trio.run(serve)
    print(f"tandem: {args.directory}: receiver stopped", file=sys.stderr)
    return 0


def _cmd_node(args: argparse.Namespace) -> int:
    # the node's imports (heartbeat, VIP, pyroute2) stay out of `tandem mount`, whose start-up
    # time is part of every failover
    from tandem.engine.node.supervisor import Assignment, Node, NodeFailed, Role, run_node

    names = [name for name, _ in args.assignments]
    if len(set(names)) != len(names):
        raise ConfigError("a module is given more than one role")
    secret_file = os.path.join(args.config_dir, "secret")
    secret = read_secret(secret_file)
    assignments = [
        Assignment(load_module(args.config_dir, name), Role(role) if role else None)
        for name, role in args.assignments
    ]
    node = Node(
        args.node,
        assignments,
        secret,
        secret_file,
        state_dir=args.state_dir,
        verbose=args.verbose,
    )
    try:
        run_node(node)
    except NodeFailed as failure:
        print(f"tandem: error: {failure}", file=sys.stderr)
        return EXIT_FAILED
    print(f"tandem: node {args.node} stopped", file=sys.stderr)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    read_secret(os.path.join(args.config_dir, "secret"))
    modules_dir = os.path.join(args.config_dir, "modules")
    try:
        files = os.listdir(modules_dir) if not args.modules else []
    except OSError as exc:
        raise ConfigError(f"cannot list {modules_dir}: {exc.strerror}") from None
    names = args.modules or sorted(f.removesuffix(".toml") for f in files if f.endswith(".toml"))
    if not names:
        raise ConfigError(f"{args.config_dir}/modules holds no NAME.toml module file")
    for name in names:
        module = load_module(args.config_dir, name)
        peer, address = module.peer_of(args.node)
        count = len(module.directories)
        print(
            f"{name}: {count} director{'y' if count == 1 else 'ies'}"
            f" ({', '.join(module.directories)}), peer {peer} at {address}, "
            f"ports {module.port}-{module.port_of(len(module.directories) - 1)}, "
            f"ack {module.ack}, timeout {module.timeout:g} s"
            + (
                f", resync capped at {module.resync_bandwidth:g} MiB/s"
                if module.resync_bandwidth
                else ""
            )
        )
        print(f"  failover: {_describe_failover(module)}")
        try:
            check_failover_timing(module)
        except ConfigError as exc:
            print(f"  warning: {exc} (fine only with fixed roles: tandem node {name}=primary)")
    return 0


def _describe_failover(module: ModuleConfig) -> str:
    parts = [
        f"heartbeat every {module.heartbeat_interval:g} s, peer lost after "
        f"{module.heartbeat_timeout:g} s on {1 + len(module.heartbeat_networks)} network(s)",
        f"VIP {module.vip}" if module.vip else "no VIP",
        "witness " + ", ".join(h if p is None else f"{h}:{p}" for h, p in module.witnesses)
        if module.witnesses
        else "no witness (a partition may let both serve)",
        f"default primary {module.default_primary}" if module.default_primary else "",
        f"{len(module.checkers)} checker(s), maxloop {module.maxloop}, then {module.on_failure}",
    ]
    if module.health_port:
        parts.append(f"health probe on port {module.health_port}")
    return "; ".join(part for part in parts if part)


def _cmd_lab(args: argparse.Namespace) -> int:
    lab = Lab.at(args.dir)
    action = args.lab_command
    if action == "up":
        heartbeat = tuple(args.heartbeat) if args.heartbeat else None
        print(lab.up(ack=args.ack, timeout=args.timeout, static=args.static, heartbeat=heartbeat))
    elif action == "exec":
        argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
        if not argv:
            raise ConfigError("tandem lab exec NODE -- COMMAND: no command given")
        command = lab.exec_command(args.node, argv)
        sys.stdout.flush()
        os.execvp(command[0], command)
    elif action == "kill":
        if not lab.kill(args.node):
            raise ConfigError(f"node {args.node} is not running")
        print(f"node {args.node} killed")
    elif action == "start":
        lab.start(args.node, args.role)
        print(f"node {args.node} started")
    elif action == "cut":
        lab.cut(args.node)
        print(f"node {args.node} cut off")
    elif action == "heal" and args.node:
        lab.cut(args.node, connected=True)
        print(f"node {args.node} reconnected")
    elif action == "heal":
        lab.heal_partition()
        for node in NODES:
            lab.cut(node, connected=True)
        print("partition healed, every cable plugged")
    elif action == "partition":
        lab.partition(args.witness)
        print(f"a and b partitioned; the witness is reachable from: {args.witness}")
    elif action == "status":
        print(lab.describe())
    elif action == "down":
        lab.down()
        print(f"lab in {lab.directory} removed")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if args.command == "mount":
            return _cmd_mount(args)
        if args.command == "receive":
            return _cmd_receive(args)
        if args.command == "node":
            return _cmd_node(args)
        if args.command == "check":
            return _cmd_check(args)
        if args.command == "lab":
            return _cmd_lab(args)
        if args.command == "state":
            return show_state(args.state_dir, args.modules, as_json=args.json)
        if args.command == "verify":
            return run_verify(args.state_dir, args.module, as_json=args.json)
        if args.command == "resync":
            return start_full_resync(args.state_dir, args.module)
        if args.command in MODULE_COMMANDS:
            extra = {"force": True} if getattr(args, "force", False) else {}
            return module_command(args.state_dir, args.module, args.command, **extra)
        if args.command == "unit":
            print(unit_text(args.modules, args.config_dir, args.state_dir), end="")
            return 0
        if args.command == "logs":
            return show_log(args.state_dir, args.module, app=args.app, lines=args.lines)
    except (MountError, ConfigError, LabError, ControlError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.command == "demo":
        from tandem.engine.lab.demo import run_demo

        return run_demo(args.workdir, args.keep)
    raise AssertionError(args.command)
