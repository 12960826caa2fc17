"""The `tandem` command. Exit codes: 0 success, 1 the operation failed, 2 bad usage."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

import trio

from tandem.fsdriver.mount import MountError, MountOptions, check_target, open_root, run_mount
from tandem.fsdriver.mutation import FileRecordingSink, NullSink, ReplicationSink

from . import __version__
from .receiver import Receiver, read_only_in_place
from .replicator import PeerAddress, Replicator
from .wire import AckKind, Identity

EXIT_FAILED = 1
EXIT_USAGE = 2


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
    parser.add_argument("--module", default="default", help="module name (both sides)")
    parser.add_argument("--node", default=socket.gethostname(), help="this node's name")


def read_secret(path: str | None) -> bytes:
    if path is None:
        raise ConfigError("replication needs --secret-file")
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            secret = handle.read().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(f"secret file {path} is readable by others: chmod 600 {path}")
    if len(secret) < 16:
        raise ConfigError(f"secret file {path} holds {len(secret)} bytes; use at least 16")
    return secret


class ConfigError(Exception):
    pass


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
    _replication_options(mount)

    receive = commands.add_parser(
        "receive",
        help="be the secondary for DIR: apply what the primary sends (DIR is read-only meanwhile)",
    )
    receive.add_argument("directory", metavar="DIR")
    receive.add_argument("--listen", metavar="HOST:PORT", type=_peer, required=True)
    _replication_options(receive)

    demo = commands.add_parser(
        "demo",
        help="run the passthrough demo: a workload on a mounted directory, its mutation "
        "stream replayed onto a second copy, both compared",
    )
    demo.add_argument(
        "--workdir",
        metavar="DIR",
        help="where to create the demo (default: a new temporary directory)",
    )
    return parser


def _cmd_mount(args: argparse.Namespace) -> int:
    sink: ReplicationSink
    recorder = FileRecordingSink(args.record) if args.record else None
    companion = None
    if args.replicate_to is not None:
        if recorder is not None:
            raise ConfigError("--record and --replicate-to cannot be combined")
        replicator = Replicator(
            args.replicate_to,
            Identity(args.node, args.module),
            read_secret(args.secret_file),
            ack=AckKind.DURABLE if args.ack == "durable" else AckKind.APPLIED,
            timeout=args.timeout,
        )
        sink, companion = replicator, replicator.run
    else:
        sink = recorder if recorder is not None else NullSink()
    options = MountOptions(attr_timeout=args.attr_timeout, entry_timeout=args.entry_timeout)
    try:
        outcome = run_mount(args.directory, sink, options, companion)
    finally:
        if recorder is not None:
            recorder.close()
    print(f"tandem: {args.directory}: {outcome}", file=sys.stderr)
    return 0


def _cmd_receive(args: argparse.Namespace) -> int:
    secret = read_secret(args.secret_file)
    path = check_target(args.directory)
    with open_root(path) as root_fd, read_only_in_place(path):
        receiver = Receiver(
            root_fd, Identity(args.node, args.module), secret, durable=args.ack == "durable"
        )

        async def serve() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receiver.serve, args.listen.host, args.listen.port)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

        trio.run(serve)
    print(f"tandem: {args.directory}: receiver stopped", file=sys.stderr)
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
    except (MountError, ConfigError) as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.workdir)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
