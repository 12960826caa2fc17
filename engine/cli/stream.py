"""`tandem mount` and `tandem receive`: one replication stream's two ends, in the foreground.

The node runs them for each directory of a module, handing each one `StreamSettings` value
(``--settings``); the flags build the same value for a hand-made stream.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable

import trio

from tandem.engine.cli.common import EXIT_OK, peer_address, positive_float
from tandem.engine.config.modules import ConfigError
from tandem.engine.config.secrets import SecretStore
from tandem.engine.config.stream import DEFAULT_RETRY, PeerAddress, StreamSettings, ack_kind
from tandem.engine.control.channel import Handler, serve_control
from tandem.engine.reintegration.journal import ChangeJournal, SecondaryJournal
from tandem.engine.replication.commands import primary_commands, secondary_commands
from tandem.engine.replication.receiver import Receiver, secondary_copy
from tandem.engine.replication.replicator import Replicator
from tandem.fsdriver.change import NO_RECORDER
from tandem.fsdriver.mount import MountOptions, check_target, run_mount
from tandem.fsdriver.mutation import FileRecordingSink, NullSink, ReplicationSink

DEFAULT_TIMEOUT = 10.0
# the flags --settings replaces (each None unless given)
_STREAM_FLAGS = ("secret_file", "ack", "timeout", "journal", "control", "module", "node")


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    mount = commands.add_parser(
        "mount",
        help="mount the replicating passthrough over DIR, in place, in the foreground",
        description="Mount over DIR itself (its content stays where it is) until SIGINT/SIGTERM.",
    )
    mount.set_defaults(run=run_mount_command)
    mount.add_argument("directory", metavar="DIR")
    mount.add_argument(
        "--record",
        metavar="FILE",
        help="append every mutation to FILE as JSON lines (what a peer would receive)",
    )
    mount.add_argument(
        "--attr-timeout",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how long the kernel may cache attributes (default 1)",
    )
    mount.add_argument(
        "--entry-timeout",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="how long the kernel may cache names (default 1)",
    )
    mount.add_argument(
        "--replicate-to",
        metavar="HOST:PORT",
        type=peer_address,
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
        type=positive_float,
        metavar="SECONDS",
        help=f"how often to try reconnecting a lost peer (default {DEFAULT_RETRY:g})",
    )
    mount.add_argument(
        "--alone-when-permitted",
        action="store_true",
        default=None,
        help="acknowledge a write the peer has not only once `permit` arrives on the control "
        "socket (what a node, or another cluster manager, sends when the peer cannot serve "
        "without this copy); meanwhile writes wait, then fail with EIO after the timeout",
    )
    mount.add_argument(
        "--sync",
        choices=["write", "fsync"],
        help="where a change waits for the peer: every write (default), or only fsync, "
        "fdatasync and writes to files opened O_SYNC/O_DSYNC (writes return once sent)",
    )
    mount.add_argument(
        "--resync-bandwidth",
        type=positive_float,
        metavar="MIB_PER_S",
        help="cap the file data a resync sends (default: no cap; new writes are never capped)",
    )
    _stream_options(
        mount,
        timeout_flags=("--peer-timeout", "--timeout"),
        timeout_help="stop waiting for a silent peer after this long and go on alone "
        f"(default {DEFAULT_TIMEOUT:g})",
    )

    receive = commands.add_parser(
        "receive",
        help="be the secondary for DIR: apply what the primary sends (DIR is read-only meanwhile)",
    )
    receive.set_defaults(run=run_receive_command)
    receive.add_argument("directory", metavar="DIR")
    receive.add_argument("--listen", metavar="HOST:PORT", type=peer_address)
    _stream_options(
        receive,
        timeout_flags=("--handshake-timeout", "--timeout"),
        timeout_help="close a connection that has not proved the secret within this long "
        f"(default {DEFAULT_TIMEOUT:g})",
    )


def _stream_options(
    parser: argparse.ArgumentParser, timeout_flags: tuple[str, ...], timeout_help: str
) -> None:
    parser.add_argument(
        "--settings",
        metavar="JSON",
        help="every setting of the stream as one JSON value (what the node passes its "
        "children); replaces the flags below",
    )
    parser.add_argument(
        "--secret-file",
        metavar="FILE",
        help="the cluster secret both nodes share (readable by root only)",
    )
    parser.add_argument(
        "--ack",
        choices=["applied", "durable"],
        help="answer a write once the secondary applied it (default) or also fsync'd it",
    )
    parser.add_argument(
        *timeout_flags, dest="timeout", type=positive_float, metavar="SECONDS", help=timeout_help
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
    parser.add_argument("--module", help="the stream's name, the same on both sides (default)")
    parser.add_argument("--node", help="this node's name (default: hostname)")


def _settings(args: argparse.Namespace, *, primary: bool) -> StreamSettings | None:
    """The stream's settings, from --settings or from the flags; None: no stream (a mount
    that only records, or nothing)."""
    if args.settings is not None:
        given = [flag for flag in _STREAM_FLAGS if getattr(args, flag) is not None]
        given += [
            flag
            for flag in (
                "replicate_to",
                "retry",
                "resync_bandwidth",
                "sync",
                "listen",
                "alone_when_permitted",
            )
            if getattr(args, flag, None) is not None
        ]
        if given:
            names = ", ".join("--" + flag.replace("_", "-") for flag in given)
            raise ConfigError(f"--settings replaces {names}: give one or the other")
        settings = StreamSettings.from_json(args.settings)
        if os.path.abspath(settings.directory) != os.path.abspath(args.directory):
            raise ConfigError(f"--settings are for {settings.directory}, not for {args.directory}")
        return settings
    address = args.replicate_to if primary else args.listen
    if address is None:
        return None
    timeout = args.timeout if args.timeout is not None else DEFAULT_TIMEOUT
    bandwidth = getattr(args, "resync_bandwidth", None)
    retry = getattr(args, "retry", None)
    return StreamSettings(
        node=args.node if args.node is not None else socket.gethostname(),
        stream=args.module if args.module is not None else "default",
        directory=args.directory,
        secret_file=args.secret_file,
        ack=ack_kind(args.ack or "applied"),
        sync=getattr(args, "sync", None) or "write",
        peer_timeout=timeout,
        handshake_timeout=timeout,
        retry=retry if retry is not None else DEFAULT_RETRY,
        journal=args.journal,
        control=args.control,
        resync_bandwidth=bandwidth * (1 << 20) if bandwidth else None,
        peer=address if primary else None,
        listen=None if primary else address,
        alone_needs_permission=bool(getattr(args, "alone_when_permitted", False)),
    )


def _check_socket_place(control: str | None) -> None:
    """Before anything is mounted: a control socket that cannot be created would end the mount
    half-way through its start."""
    if control is None:
        return
    parent = os.path.dirname(os.path.abspath(control))
    if not os.path.isdir(parent):
        raise ConfigError(f"--control {control}: no directory {parent} to create the socket in")


def _secret(settings: StreamSettings) -> SecretStore:
    """The secrets, followed through a rotation while the stream runs (next to the file: its
    `.next` and `.previous`)."""
    if settings.secret_file is None:
        raise ConfigError("replication needs --secret-file")
    return SecretStore(settings.secret_file)


def run_mount_command(args: argparse.Namespace) -> int:
    if args.wait_for_go and sys.stdin.readline().strip() != "go":
        return EXIT_OK  # not needed after all
    settings = _settings(args, primary=True)
    control = settings.control if settings is not None else args.control
    _check_socket_place(control)
    if settings is not None and settings.alone_needs_permission and control is None:
        raise ConfigError("--alone-when-permitted needs --control (where the permit arrives)")
    sink: ReplicationSink
    recorder = FileRecordingSink(args.record) if args.record else None
    journal_path = settings.journal if settings is not None else args.journal
    journal = ChangeJournal(journal_path) if journal_path else None
    companion = None
    backing_fd = -1
    try:
        if settings is not None:
            if recorder is not None:
                raise ConfigError("--record and --replicate-to cannot be combined")
            secret = _secret(settings)
            # the resync reads the copy itself, not through the mount: open it before the mount
            # hides it
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            backing_fd = os.open(check_target(args.directory), flags)
            replicator = Replicator(settings, secret.keyring, root_fd=backing_fd, journal=journal)
            sink, companion = (
                replicator,
                _with_control(
                    replicator.run,
                    settings.control,
                    primary_commands(replicator, args.directory),
                ),
            )
        else:
            if args.control:
                raise ConfigError("--control needs --replicate-to (it reports on replication)")
            sink = recorder if recorder is not None else NullSink()
        options = MountOptions(attr_timeout=args.attr_timeout, entry_timeout=args.entry_timeout)
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
    return EXIT_OK


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


def _check_can_listen(listen: PeerAddress) -> None:
    """Before the copy is made read-only: a port another process holds is one clear line."""
    try:
        infos = socket.getaddrinfo(listen.host, listen.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise ConfigError(f"--listen {listen}: {exc.strerror}") from None
    family, kind, _, _, address = infos[0]
    with socket.socket(family, kind) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror}") from None


def run_receive_command(args: argparse.Namespace) -> int:
    settings = _settings(args, primary=False)
    if settings is None or settings.listen is None:
        raise ConfigError("tandem receive needs --listen HOST:PORT (or --settings)")
    listen = settings.listen
    secret = _secret(settings)
    _check_socket_place(settings.control)
    _check_can_listen(listen)
    with secondary_copy(args.directory) as root_fd:
        journal = SecondaryJournal(settings.journal) if settings.journal else None
        receiver = Receiver(root_fd, settings, secret.keyring, journal=journal)

        async def serve() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receiver.serve, listen.host, listen.port)
                    if settings.control:
                        commands = secondary_commands(receiver, args.directory)
                        nursery.start_soon(serve_control, settings.control, commands)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        break

        trio.run(serve)
    print(f"tandem: {args.directory}: receiver stopped", file=sys.stderr)
    return EXIT_OK
