"""`tandem secret`: write a strong cluster secret, and rotate it without an outage.

The steps and what each one guarantees: `tandem.engine.config.secrets`.
"""

from __future__ import annotations

import argparse
from typing import Any

from tandem.engine.api.report import failover_state, known_modules
from tandem.engine.cli.common import EXIT_OK, node_options, state_dir_option
from tandem.engine.config.modules import ConfigError
from tandem.engine.config.secrets import (
    describe,
    fingerprint,
    load_keyring,
    new_secret,
    next_path,
    previous_path,
    promote,
    retire,
    secret_path,
    write_secret,
)


def _peers_on_previous(state_dir: str) -> list[str]:
    """Running modules whose peer still signs its heartbeats with the previous secret."""
    return [
        f"module {name}: peer {state['peer']['node']}"
        for name, state in _running(state_dir).items()
        if state.get("peer", {}).get("signs_with") == "previous"
    ]


def run_new(args: argparse.Namespace) -> int:
    path = secret_path(args.config_dir)
    target = next_path(path) if args.next else path
    if target.exists() and not args.force:
        what = "a next secret" if args.next else "a secret"
        hint = "" if args.next else " (to rotate it while the cluster runs: --next)"
        raise ConfigError(f"{target} already holds {what}; --force replaces it{hint}")
    if args.next and not path.exists():
        raise ConfigError(f"{path} does not exist: a next secret needs a current one")
    if not path.parent.is_dir():
        raise ConfigError(f"{path.parent} is not a directory (--config-dir)")
    secret = new_secret()
    write_secret(target, secret)
    print(f"wrote {target} (key id {fingerprint(secret)}, mode 0600)")
    print(f"copy it to the same place on the other node, e.g. scp -p {target} PEER:{target}")
    if args.next:
        print("then, on each node: tandem secret promote; once both are: tandem secret retire")
    return EXIT_OK


def run_promote(args: argparse.Namespace) -> int:
    keyring = promote(secret_path(args.config_dir))
    print(f"promoted: {describe(keyring)}")
    print("once the other node is promoted too: tandem secret retire (on each node)")
    return EXIT_OK


def run_retire(args: argparse.Namespace) -> int:
    path = secret_path(args.config_dir)
    waiting = _peers_on_previous(args.state_dir)
    if waiting and previous_path(path).exists() and not args.force:
        raise ConfigError(
            f"the peer still signs with the previous secret ({'; '.join(waiting)}): run tandem "
            "secret promote there first (--force retires it anyway)"
        )
    retire(path)  # says so when there is no previous secret
    print(f"retired {previous_path(path)}: {describe(load_keyring(path))}")
    return EXIT_OK


def run_status(args: argparse.Namespace) -> int:
    path = secret_path(args.config_dir)
    keyring = load_keyring(path)
    print(f"{path}: {describe(keyring)}")
    for name, state in _running(args.state_dir).items():
        signs = state.get("peer", {}).get("signs_with")
        peer = state.get("peer", {}).get("node")
        print(f"module {name}: peer {peer} signs with {signs or 'nothing heard yet'}")
    return EXIT_OK


def _running(state_dir: str) -> dict[str, dict[str, Any]]:
    return {
        name: state
        for name in known_modules(state_dir, [])
        if (state := failover_state(state_dir, name)) is not None and state["running"]
    }


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = commands.add_parser(
        "secret",
        help="write the cluster secret; rotate it (new --next, promote, retire) with no outage",
    )
    actions = group.add_subparsers(dest="action", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="write a strong secret (mode 0600, owned by root)")
    new.add_argument(
        "--next", action="store_true", help="write the next secret of a rotation (secret.next)"
    )
    new.add_argument("--force", action="store_true", help="replace an existing file")
    new.set_defaults(run=run_new)
    step = actions.add_parser("promote", help="the next secret becomes current (rotation step 2)")
    step.set_defaults(run=run_promote)
    end = actions.add_parser(
        "retire", help="delete the previous secret once both nodes are promoted (step 3)"
    )
    end.add_argument("--force", action="store_true", help="even while the peer still signs with it")
    end.set_defaults(run=run_retire)
    show = actions.add_parser("status", help="which secrets this node holds, and the peer uses")
    show.set_defaults(run=run_status)
    for parser in (new, step, end, show):
        node_options(parser)
        state_dir_option(parser)
