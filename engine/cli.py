"""The `tandem` command. Exit codes: 0 success, 1 the operation failed, 2 bad usage."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tandem.fsdriver.mount import MountError, MountOptions, run_mount
from tandem.fsdriver.mutation import FileRecordingSink, NullSink, ReplicationSink

from . import __version__

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
    sink = recorder if recorder is not None else NullSink()
    options = MountOptions(attr_timeout=args.attr_timeout, entry_timeout=args.entry_timeout)
    try:
        outcome = run_mount(args.directory, sink, options)
    except MountError as exc:
        print(f"tandem: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if recorder is not None:
            recorder.close()
    print(f"tandem: {args.directory}: {outcome}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if args.command == "mount":
        return _cmd_mount(args)
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(args.workdir)
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
