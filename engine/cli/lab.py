"""`tandem lab` (a throwaway two-node cluster on this machine) and `tandem demo`."""

from __future__ import annotations

import argparse
import os
import sys

from tandem.engine.cli.common import EXIT_OK, positive_float
from tandem.engine.cli.node import ROLES
from tandem.engine.cli.tail import line_count, show_tail
from tandem.engine.config.modules import ConfigError
from tandem.engine.lab.lab import DELAY, NODES, Lab


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lab = commands.add_parser(
        "lab",
        help="a throwaway two-node cluster on this machine (network + mount namespaces)",
        description="Nodes a (primary) and b (secondary) replicating one directory, each in "
        "its own namespaces, so the directory has the same path on both.",
    )
    lab.set_defaults(run=run_lab_command)
    lab.add_argument(
        "--dir", metavar="DIR", help="where the lab lives (default /var/lib/tandem-lab)"
    )
    lab_commands = lab.add_subparsers(dest="lab_command", required=True, metavar="ACTION")
    lab_up = lab_commands.add_parser("up", help="create the nodes, start the demo module")
    lab_up.add_argument("--ack", choices=["applied", "durable"], default="applied")
    lab_up.add_argument(
        "--sync",
        choices=["write", "fsync"],
        default="write",
        help="the module's sync point: every write waits for the peer (default), or only fsync",
    )
    lab_up.add_argument(
        "--heartbeat",
        nargs=2,
        type=positive_float,
        metavar=("INTERVAL", "TIMEOUT"),
        help="heartbeat interval and timeout in seconds (default 0.2 1.0)",
    )
    lab_up.add_argument(
        "--disk",
        type=int,
        metavar="MIB",
        help="each node's copy on a filesystem of its own of this size (a tmpfs), so that "
        "`fill` can make one full",
    )
    lab_up.add_argument(
        "--static",
        action="store_true",
        help="fixed roles (a primary, b secondary): replication without failover",
    )
    lab_up.add_argument(
        "--timeout",
        type=positive_float,
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
    lab_impair = lab_commands.add_parser(
        "impair",
        help="what the nodes send each other goes bad: TCP resets, 10 % loss, or delay",
    )
    lab_impair.add_argument("how", choices=["reset", "loss", "delay"])
    lab_impair.add_argument(
        "--delay",
        type=positive_float,
        default=DELAY,
        metavar="SECONDS",
        help=f"with delay: added to every TCP byte between the nodes, each way (default {DELAY})",
    )
    lab_commands.add_parser("mend", help="end `impair`")
    for name, what in (("fill", "make NODE's disk full"), ("unfill", "free what `fill` took")):
        filling = lab_commands.add_parser(name, help=what + " (a lab made with --disk)")
        filling.add_argument("node", choices=sorted(NODES))
    lab_nemesis = lab_commands.add_parser(
        "nemesis",
        help="random faults under a client writing at the VIP; checks that no acknowledged "
        "write is lost, never two serve, the copies converge (JSON report; exit 1 if not)",
    )
    lab_nemesis.add_argument("--seed", type=int, default=1, help="the schedule's seed (1)")
    lab_nemesis.add_argument("--faults", type=int, default=10, help="how many faults (10)")
    lab_nemesis.add_argument("--out", metavar="FILE", help="also write the report there")
    lab_commands.add_parser("status", help="what runs where")
    lab_logs = lab_commands.add_parser("logs", help="a node's log (its `tandem node` and mounts)")
    lab_logs.add_argument("node", choices=sorted(NODES))
    lab_logs.add_argument(
        "-n", "--lines", type=line_count, default=50, help="how many last lines (50; 0: all)"
    )
    lab_logs.add_argument("-f", "--follow", action="store_true", help="then print what follows")
    lab_commands.add_parser("down", help="remove every namespace, process and file of the lab")
    for action in lab_commands.choices.values():
        # `tandem lab up --dir D` as well as `tandem lab --dir D up`; SUPPRESS keeps the
        # first spelling's value when the second is not used
        action.add_argument(
            "--dir", metavar="DIR", default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )

    demo = commands.add_parser(
        "demo",
        help="the main job: a two-node lab, a database workload on the primary, a crash of "
        "the primary, and a check that the secondary holds every committed transaction",
    )
    demo.set_defaults(run=run_demo_command)
    demo.add_argument(
        "--workdir",
        metavar="DIR",
        help="where to create the demo (default: a new temporary directory)",
    )
    demo.add_argument("--keep", action="store_true", help="leave the lab up afterwards")


def run_lab_command(args: argparse.Namespace) -> int:
    lab = Lab.at(args.dir)
    action = args.lab_command
    if action == "up":
        heartbeat = tuple(args.heartbeat) if args.heartbeat else None
        print(
            lab.up(
                ack=args.ack,
                sync=args.sync,
                timeout=args.timeout,
                static=args.static,
                heartbeat=heartbeat,
                disk_mib=args.disk,
            )
        )
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
    elif action == "impair":
        lab.impair(args.how, args.delay)
        print(f"the link between a and b: {args.how}")
    elif action in ("fill", "unfill"):
        getattr(lab, action)(args.node)
        print(f"node {args.node}'s disk: {'full' if action == 'fill' else 'freed'}")
    elif action == "mend":
        lab.mend()
        print("the link between a and b mended")
    elif action == "nemesis":
        from tandem.engine.lab.nemesis import run_nemesis

        return run_nemesis(args.dir, args.seed, args.faults, args.out)
    elif action == "status":
        print(lab.describe())
    elif action == "logs":
        lab.check_up()
        try:
            show_tail(lab.log_path(args.node), args.lines, args.follow)
        except FileNotFoundError:
            raise ConfigError(
                f"node {args.node} has no log yet ({lab.log_path(args.node)})"
            ) from None
    elif action == "down":
        lab.down()
        print(f"lab in {lab.directory} removed")
    return EXIT_OK


def run_demo_command(args: argparse.Namespace) -> int:
    from tandem.engine.lab.demo import run_demo

    return run_demo(args.workdir, args.keep)
