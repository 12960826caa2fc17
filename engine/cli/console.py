"""`tandem console passwd|users|remove|token` and `tandem snapshot`: who may use the web
console and the API, and the support bundle."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from tandem.engine.cli.common import EXIT_OK, node_options, state_dir_option
from tandem.engine.config.modules import ConfigError


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = commands.add_parser(
        "console", help="users and tokens of the web console and HTTP API (this node)"
    )
    actions = console.add_subparsers(dest="console_action", required=True, metavar="ACTION")

    passwd = actions.add_parser(
        "passwd", help="set a user's password (creates the user; default admin)"
    )
    passwd.add_argument("user", nargs="?", default="admin")
    passwd.add_argument("--role", choices=("admin", "read-only"), default="admin")
    passwd.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    passwd.set_defaults(run=_passwd)

    users = actions.add_parser("users", help="list users and tokens (never their secrets)")
    users.set_defaults(run=_users)

    remove = actions.add_parser("remove", help="remove a user")
    remove.add_argument("user")
    remove.set_defaults(run=_remove)

    token = actions.add_parser("token", help="a token for scripts and Prometheus (shown once)")
    token.add_argument("name")
    token.add_argument("--role", choices=("admin", "read-only"), default="read-only")
    token.add_argument("--revoke", action="store_true", help="revoke the token of that name")
    token.set_defaults(run=_token)
    for parser in (passwd, users, remove, token):
        node_options(parser)

    snapshot = commands.add_parser(
        "snapshot", help="write a support snapshot (.zip) of this node: logs, states, configs"
    )
    snapshot.add_argument("--out", metavar="FILE", help="default: tandem-snapshot-NODE-TIME.zip")
    snapshot.set_defaults(run=_snapshot)
    node_options(snapshot)
    state_dir_option(snapshot)


def _users_path(args: argparse.Namespace) -> Path:
    from tandem.engine.api.users import users_file

    return users_file(args.config_dir)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    first = getpass.getpass("new password: ")
    if getpass.getpass("again: ") != first:
        raise ConfigError("the two passwords differ; nothing changed")
    return first


def _passwd(args: argparse.Namespace) -> int:
    from tandem.engine.api.users import set_password

    password = _read_password(args.password_stdin)
    set_password(_users_path(args), args.user, password, args.role)
    print(f"password set for {args.user} ({args.role}); it takes effect at once")
    return EXIT_OK


def _users(args: argparse.Namespace) -> int:
    from tandem.engine.api.users import listing

    lines = listing(_users_path(args))
    print("\n".join(lines) if lines else "no user yet: tandem console passwd")
    return EXIT_OK


def _remove(args: argparse.Namespace) -> int:
    from tandem.engine.api.users import remove_user

    remove_user(_users_path(args), args.user)
    print(f"user {args.user} removed (open sessions end within a request)")
    return EXIT_OK


def _token(args: argparse.Namespace) -> int:
    from tandem.engine.api.users import new_token, revoke_token

    if args.revoke:
        revoke_token(_users_path(args), args.name)
        print(f"token {args.name} revoked")
        return EXIT_OK
    token = new_token(_users_path(args), args.name, args.role)
    print(token)
    print(
        f"token {args.name} ({args.role}): give it as 'Authorization: Bearer TOKEN'; "
        "it is not shown again",
        file=sys.stderr,
    )
    return EXIT_OK


def _snapshot(args: argparse.Namespace) -> int:
    from tandem.engine.api.snapshot import snapshot_name, write_snapshot
    from tandem.engine.config.secrets import load_keyring, secret_path

    try:
        keyring = load_keyring(secret_path(args.config_dir))
        held = keyring.preferred
    except ConfigError:
        held = ()  # no secret here: nothing to blank, and the snapshot says why in its state
    data = write_snapshot(args.node, args.state_dir, args.config_dir, held)
    out = args.out or snapshot_name(args.node)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
    print(f"snapshot of node {args.node} written to {out} ({len(data) // 1024} KiB)")
    return EXIT_OK
