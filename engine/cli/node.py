"""`tandem node`, `tandem check`, `tandem unit`: running this node's modules, and what is
checked before they run."""

from __future__ import annotations

import argparse
import signal
import sys

from tandem.engine.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    node_options,
    state_dir_option,
)
from tandem.engine.config.modules import (
    ConfigError,
    ModuleConfig,
    check_failover_timing,
)
from tandem.engine.config.paths import DEFAULT_API_PORT, DEFAULT_CONFIG_DIR
from tandem.engine.config.preflight import load_modules, module_names, preflight
from tandem.engine.config.secrets import SecretStore, load_keyring, secret_path
from tandem.engine.node.systemd import api_unit_text, template_text, unit_text

ROLES = ("primary", "secondary")


def _assignment(text: str) -> tuple[str, str | None]:
    name, sep, role = text.partition("=")
    if not name or (sep and role not in ROLES):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not MODULE (failed over), MODULE=primary or MODULE=secondary"
        )
    return name, role if sep else None


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    node = commands.add_parser(
        "node",
        help="run this node's modules in the foreground (the systemd unit runs this)",
        description="Run modules configured in CONFIG_DIR/modules/NAME.toml until SIGINT/SIGTERM. "
        "A module given by name fails over (heartbeat, virtual IP, scripts); MODULE=primary or "
        "MODULE=secondary fixes its role (replication only).",
    )
    node.set_defaults(run=run_node_command)
    node.add_argument("assignments", nargs="+", metavar="MODULE[=ROLE]", type=_assignment)
    node.add_argument(
        "--api",
        default=f":{DEFAULT_API_PORT}",
        metavar="HOST:PORT",
        help=f"where the HTTP API and web console listen (default :{DEFAULT_API_PORT}, every "
        "address; the same port on every node; none: no API)",
    )
    node.add_argument(
        "--api-plain",
        action="store_true",
        help="serve the API over plain HTTP (behind a TLS proxy only; HTTPS by default)",
    )
    node_options(node)
    state_dir_option(node)

    unit = commands.add_parser(
        "unit",
        help="print a systemd unit running the node for these modules "
        "(tandem unit web db > /etc/systemd/system/tandem.service)",
    )
    unit.set_defaults(run=run_unit_command)
    unit.add_argument("modules", nargs="*", metavar="MODULE")
    which = unit.add_mutually_exclusive_group()
    which.add_argument(
        "--template",
        action="store_true",
        help="a unit per module instead: tandem@.service (systemctl enable --now tandem@web)",
    )
    which.add_argument(
        "--api", action="store_true", help="the console and API unit that goes with --template"
    )
    unit.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR, metavar="DIR")
    state_dir_option(unit)

    api = commands.add_parser(
        "api",
        help="serve the console and HTTP API alone (beside tandem@MODULE units)",
    )
    api.set_defaults(run=run_api_command)
    api.add_argument("--listen", default=f":{DEFAULT_API_PORT}", metavar="HOST:PORT")
    api.add_argument("--plain", action="store_true", help="plain HTTP (behind a TLS proxy)")
    node_options(api)
    state_dir_option(api)

    check = commands.add_parser(
        "check",
        help="validate module configuration files and the secret, then say what they define",
    )
    check.set_defaults(run=run_check_command)
    check.add_argument("modules", nargs="*", metavar="MODULE", help="default: every module")
    node_options(check)


def run_node_command(args: argparse.Namespace) -> int:
    # the node's imports (heartbeat, VIP, pyroute2) stay out of `tandem mount`, whose start-up
    # time is part of every failover
    from tandem.engine.api.server import Listen
    from tandem.engine.node.supervisor import (
        ApiSettings,
        Assignment,
        FixedRole,
        Node,
        NodeFailed,
        run_node,
    )

    names = [name for name, _ in args.assignments]
    if len(set(names)) != len(names):
        raise ConfigError("a module is given more than one role")
    secret_file = str(secret_path(args.config_dir))
    secrets = SecretStore(secret_file)
    modules = load_modules(args.config_dir, names)
    # nothing starts unless everything checks out: no half-way start
    findings = preflight(
        modules, args.node, failover=[role is None for _, role in args.assignments]
    )
    for warning in findings.warnings:
        print(f"tandem: warning: {warning}", file=sys.stderr)
    if findings.errors:
        raise ConfigError("\n".join(findings.errors))
    assignments = [
        Assignment(module, FixedRole(role) if role else None)
        for module, (_, role) in zip(modules, args.assignments, strict=True)
    ]
    api = ApiSettings(Listen.parse(args.api), args.config_dir, tls=not args.api_plain)
    node = Node(
        args.node,
        assignments,
        secrets,
        secret_file,
        state_dir=args.state_dir,
        verbose=args.verbose,
        api=api if api.listen is not None else None,
    )
    try:
        run_node(node)
    except NodeFailed as failure:
        print(f"tandem: error: {failure}", file=sys.stderr)
        return EXIT_FAILED
    print(f"tandem: node {args.node} stopped", file=sys.stderr)
    return EXIT_OK


def run_unit_command(args: argparse.Namespace) -> int:
    if args.template or args.api:
        if args.modules:
            raise ConfigError("--template and --api take no module: the unit serves any")
        text = (template_text if args.template else api_unit_text)(args.config_dir, args.state_dir)
        print(text, end="")
        return EXIT_OK
    if not args.modules:
        raise ConfigError("name the modules the unit runs (or give --template)")
    load_modules(args.config_dir, args.modules)  # a unit for a module that is not there fails
    print(unit_text(args.modules, args.config_dir, args.state_dir), end="")
    return EXIT_OK


def run_api_command(args: argparse.Namespace) -> int:
    """The API alone, for nodes whose modules each run in a unit of their own."""
    import trio

    from tandem.engine.api.app import ApiContext
    from tandem.engine.api.server import Listen, serve_api
    from tandem.fsdriver.mount import notify_systemd

    listen = Listen.parse(args.listen)
    if listen is None:
        raise ConfigError("--listen none: nothing to serve")
    secrets = SecretStore(str(secret_path(args.config_dir)))
    modules = load_modules(args.config_dir, module_names(args.config_dir))
    ctx = ApiContext(
        node=args.node,
        state_dir=args.state_dir,
        config_dir=args.config_dir,
        modules={module.name: module for module in modules},
        held_secrets=secrets.heartbeat_secrets,
        port=listen.port,
        tls=not args.plain,
    )

    async def main() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(serve_api, ctx, listen)
                notify_systemd(b"READY=1")
                async for _ in signals:
                    nursery.cancel_scope.cancel()
                    break

    trio.run(main)
    return EXIT_OK


def run_check_command(args: argparse.Namespace) -> int:
    load_keyring(secret_path(args.config_dir))
    names = args.modules or module_names(args.config_dir)
    if not names:
        raise ConfigError(f"{args.config_dir}/modules holds no NAME.toml module file")
    modules = load_modules(args.config_dir, names)
    # conflicts are judged against every module this node is configured with
    others = [n for n in module_names(args.config_dir) if n not in names] if args.modules else []
    everything = modules + load_modules(args.config_dir, others)
    findings = preflight(everything, args.node, starting=False)
    for module in modules:
        peer, address = module.peer_of(args.node) if args.node in module.nodes else ("?", "?")
        count = len(module.directories)
        print(
            f"{module.name}: {count} director{'y' if count == 1 else 'ies'}"
            f" ({', '.join(module.directories)}), peer {peer} at {address}, "
            f"ports {module.port}-{module.port_of(len(module.directories) - 1)}, "
            f"ack {module.ack}, sync at each {module.sync}, timeout {module.timeout:g} s"
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
            print(
                f"  warning: {exc} (fine only with fixed roles: tandem node {module.name}=primary)"
            )
    for warning in findings.warnings:
        print(f"  warning: {warning}")
    if findings.errors:
        raise ConfigError("\n".join(findings.errors))
    return EXIT_OK


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
