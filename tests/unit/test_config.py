"""Module configuration: a good file parses; every mistake names the file, the key and the
problem; the commands that read it say so and exit 1."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tandem.engine.config.modules import (
    ConfigError,
    check_failover_timing,
    load_module,
    parse_module,
)

GOOD = """
directories = ["/srv/app", "/var/lib/app/"]
port = 7500
ack = "durable"
timeout = 2.5
resync_bandwidth = 20
[nodes]
alpha = "198.18.0.1"
beta = "beta.example"
"""


def test_a_good_module_parses() -> None:
    module = parse_module("web", GOOD, "web.toml")
    assert module.directories == ("/srv/app", "/var/lib/app")
    assert module.port_of(1) == 7501
    assert module.ack == "durable" and module.timeout == 2.5
    assert module.resync_bandwidth == 20.0
    assert module.peer_of("alpha") == ("beta", "beta.example")
    assert module.peer_of("beta") == ("alpha", "198.18.0.1")


def test_defaults() -> None:
    module = parse_module("m", 'directories = ["/d"]\n[nodes]\na = "::1"\nb = "10.0.0.2"', "m")
    assert (module.port, module.ack, module.timeout) == (7400, "applied", 10.0)
    assert module.sync == "write"
    assert module.resync_bandwidth is None


def test_the_fsync_sync_point_parses() -> None:
    assert parse_module("web", 'sync = "fsync"\n' + GOOD, "web.toml").sync == "fsync"


def _with(line: str, drop: str | None = None) -> str:
    kept = [ln for ln in GOOD.splitlines() if drop is None or not ln.startswith(drop)]
    body = "\n".join(kept)
    # top-level keys must come before [nodes]
    head, _, nodes = body.partition("[nodes]")
    return f"{line}\n{head}[nodes]{nodes}" if not line.startswith("[") else body + "\n" + line


BAD = [
    (_with("colour = 1"), "colour: unknown key"),
    (_with("", drop="directories"), "directories: missing"),
    (_with('directories = "/srv"', drop="directories"), "directories: must be a non-empty list"),
    (_with("directories = []", drop="directories"), "directories: must be a non-empty list"),
    (_with('directories = ["srv"]', drop="directories"), "directories[0]: must be an absolute"),
    (_with('directories = ["/"]', drop="directories"), "directories[0]: cannot be /"),
    (_with('directories = ["/a", "/a/"]', drop="directories"), "directories[1]: '/a/' is listed"),
    (_with('directories = ["/a", "/a/b"]', drop="directories"), "are nested"),
    (_with("directories = [3]", drop="directories"), "directories[0]: must be a string, got int"),
    (_with("port = 0", drop="port"), "port: must be an integer from 1 to 65535"),
    (_with('port = "80"', drop="port"), "port: must be an integer"),
    (_with("port = 65535", drop="port"), "port: 65535 + 2 directories passes 65535"),
    (_with('ack = "fast"', drop="ack"), 'ack: must be "applied" or "durable"'),
    (_with('sync = "close"'), 'sync: must be "write" or "fsync", got str'),
    (_with("sync = 1"), 'sync: must be "write" or "fsync", got int'),
    (_with("timeout = 0", drop="timeout"), "timeout: must be a number of seconds above 0"),
    (_with("timeout = true", drop="timeout"), "timeout: must be a number"),
    (
        _with("resync_bandwidth = 0", drop="resync"),
        "resync_bandwidth: must be MiB/s above 0, got int 0",
    ),
    (
        _with('resync_bandwidth = "fast"', drop="resync"),
        "resync_bandwidth: must be MiB/s above 0, got str",
    ),
    ('directories = ["/d"]\nnodes = 3', "nodes: must be a table"),
    ('directories = ["/d"]\n[nodes]\na = "198.18.0.1"', "nodes: a mirror module has exactly two"),
    ('directories = ["/d"]\n[nodes]\na = "h"\nb = "h"', "nodes: both nodes have the same address"),
    ('directories = ["/d"]\n[nodes]\na = "x y"\nb = "h"', "nodes.a: 'x y' is neither"),
    ('directories = ["/d"]\n[nodes]\n"-a" = "h"\nb = "g"', "nodes.-a: node name '-a' must be"),
    ('directories = ["/d"]\n[nodes]\na = 1\nb = "g"', "nodes.a: must be an IP address"),
    ("directories = [", "not valid TOML"),
    (_with('default_primary = "gamma"'), "default_primary: must be one of the nodes"),
    (_with('vip = "198.18.0.100"'), 'vip: must be "ADDRESS/PREFIX"'),
    (_with('vip = "198.18.0.1/24"'), "vip: 198.18.0.1 is a node's own address"),
    (_with('vip_interface = "eth0"'), "vip_interface: given without a vip"),
    (_with("health_port = 70000"), "health_port: must be an integer from 1 to 65535"),
    (_with('witness = ["198.18.0.254:x"]'), "witness[0]: '198.18.0.254:x': the port must"),
    (_with('witness = ["no such host!"]'), "witness[0]: 'no such host!' is neither"),
    (_with("witness = 3"), "witness: must be a list of addresses"),
    (_with("heartbeat_interval = 2"), "heartbeat_interval: 2 s must be shorter than"),
    (_with("heartbeat_timeout = -1"), "heartbeat_timeout: must be a number of seconds above 0"),
    (_with('heartbeat_networks = [{alpha = "10.0.0.1"}]'), "heartbeat_networks[0]: must give"),
    (_with("maxloop = -1"), "maxloop: must be an integer of 0 or more"),
    (_with('on_failure = "panic"'), 'on_failure: must be "failover" or "stop"'),
    (_with('[[checker]]\nkind = "smell"\ntarget = "x"'), "checker[0].kind: must be one of"),
    (_with('[[checker]]\nkind = "tcp"\ntarget = "127.0.0.1"'), "checker[0].port: missing"),
    (_with('[[checker]]\nkind = "ping"\ntarget = "h"\nport = 1'), "checker[0].port: only a tcp"),
    (_with('[[checker]]\nkind = "custom"\ntarget = "check.sh"'), "checker[0].target: a custom"),
    (_with('[[checker]]\nkind = "process"\ntarget = "x"\ncolour = 1'), "checker[0].colour:"),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=[e for _, e in BAD])
def test_every_mistake_names_its_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_module("web", text, "/etc/tandem/modules/web.toml")
    assert str(raised.value).startswith("/etc/tandem/modules/web.toml: ")
    assert expected in str(raised.value)


FAILOVER = """
directories = ["/srv/app"]
default_primary = "beta"
vip = "198.18.0.100/24"
witness = ["198.18.0.254", "198.18.0.253:53", "[::1]:80"]
heartbeat_networks = [{alpha = "198.18.1.1", beta = "198.18.1.2"}]
on_failure = "stop"
[[checker]]
kind = "tcp"
target = "127.0.0.1"
port = 5432
[[checker]]
kind = "process"
target = "postgres"
interval = 1
[nodes]
alpha = "198.18.0.1"
beta = "198.18.0.2"
"""


def test_failover_settings_parse() -> None:
    module = parse_module("db", FAILOVER, "db.toml")
    assert module.default_primary == "beta" and module.vip == "198.18.0.100/24"
    assert module.witnesses == (("198.18.0.254", None), ("198.18.0.253", 53), ("::1", 80))
    assert module.heartbeat_networks == ({"alpha": "198.18.1.1", "beta": "198.18.1.2"},)
    assert [(c.kind, c.port, c.interval) for c in module.checkers] == [
        ("tcp", 5432, 5.0),
        ("process", None, 1.0),
    ]
    assert (module.heartbeat_interval, module.heartbeat_timeout) == (0.2, 1.0)
    check_failover_timing(module)  # the default 10 s leaves the heartbeat room


def test_a_replication_timeout_shorter_than_the_heartbeat_needs_is_refused_for_failover() -> None:
    module = parse_module("db", FAILOVER.replace("on_failure", "timeout = 2.5\non_failure"), "db")
    with pytest.raises(ConfigError, match=r"db: timeout: 2\.5 s is too short .* at least .* = 3 s"):
        check_failover_timing(module)


def test_missing_module_file_and_bad_module_name(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such module file"):
        load_module(tmp_path, "web")
    with pytest.raises(ConfigError, match=r"module name '\.\./x' must be"):
        load_module(tmp_path, "../x")


def test_a_node_that_is_not_in_the_module_is_told_so() -> None:
    module = parse_module("web", GOOD, "web.toml")
    with pytest.raises(ConfigError, match="this node is 'gamma', which is not one of alpha, beta"):
        module.peer_of("gamma")


def _tandem(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tandem.engine.cli", *args], capture_output=True, text=True
    )


def _config_dir(tmp_path: Path, module_text: str) -> Path:
    (tmp_path / "modules").mkdir(parents=True)
    (tmp_path / "modules" / "web.toml").write_text(module_text)
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123")
    secret.chmod(0o600)
    return tmp_path


def test_check_describes_what_the_files_define(tmp_path: Path) -> None:
    # what the node needs is there: the directories, names that resolve, the scripts
    app, lib = tmp_path / "srv-app", tmp_path / "var-lib-app"
    app.mkdir()
    lib.mkdir()
    good = GOOD.replace('"/srv/app", "/var/lib/app/"', f'"{app}", "{lib}/"')
    config = _config_dir(tmp_path / "c", good.replace("beta.example", "localhost"))
    done = _tandem("check", "--config-dir", str(config), "--node", "alpha")
    assert done.returncode == 0, done.stderr
    first, failover, warning, scripts = done.stdout.splitlines()
    assert first == (
        f"web: 2 directories ({app}, {lib}), peer beta at localhost, "
        "ports 7500-7501, ack durable, sync at each write, timeout 2.5 s, resync capped at 20 MiB/s"
    )
    assert failover == (
        "  failover: heartbeat every 0.2 s, peer lost after 1 s on 1 network(s); no VIP; "
        "no witness (a partition may let both serve); 0 checker(s), maxloop 3, then failover"
    )
    assert warning.startswith("  warning: ") and "timeout: 2.5 s is too short" in warning
    assert scripts.startswith("  warning: ") and "start_prim: missing" in scripts
    config = _config_dir(tmp_path / "f", FAILOVER.replace("/srv/app", str(app)))
    (config / "modules" / "web").mkdir()
    (config / "modules" / "web" / "start_prim").write_text("#!/bin/sh\n")
    (config / "modules" / "web" / "start_prim").chmod(0o755)
    done = _tandem("check", "--config-dir", str(config), "--node", "alpha")
    assert done.returncode == 0, done.stderr
    assert "VIP 198.18.0.100/24; witness 198.18.0.254, 198.18.0.253:53, ::1:80" in done.stdout
    assert "default primary beta; 2 checker(s), maxloop 3, then stop" in done.stdout
    # this machine is not node alpha: its VIP's subnet can only be judged there
    warnings = [line for line in done.stdout.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "vip: not checked on this machine" in warnings[0], warnings


def test_node_and_check_refuse_bad_configuration_with_exit_1(tmp_path: Path) -> None:
    config = _config_dir(tmp_path, GOOD.replace('ack = "durable"', 'ack = "fast"'))
    for command in (["check"], ["node", "web=primary"]):
        done = _tandem(*command, "--config-dir", str(config), "--node", "alpha")
        assert done.returncode == 1
        assert done.stderr.strip() == (
            f'tandem: error: {config}/modules/web.toml: ack: must be "applied" or "durable", '
            "got str 'fast'"
        )
    wrong_role = _tandem("node", "web=leader", "--config-dir", str(config))
    assert wrong_role.returncode == 2 and "MODULE=primary or MODULE=secondary" in wrong_role.stderr
    unknown = _tandem("node", "nosuch", "--config-dir", str(config))
    assert unknown.returncode == 1 and "no such module file (module 'nosuch')" in unknown.stderr
    (config / "secret").chmod(0o644)
    exposed = _tandem("check", "--config-dir", str(config), "--node", "alpha")
    assert exposed.returncode == 1 and "open to group or others" in exposed.stderr
