"""The systemd unit `tandem unit` prints: systemd's own checker accepts it, and it runs the
node in notify mode with the modules, directories and stop order the docs promise."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.engine.config.modules import ConfigError
from tandem.engine.node.systemd import unit_text

MODULE = """
directories = ["/srv/{name}"]
port = {port}
[nodes]
alpha = "198.18.0.1"
beta = "198.18.0.2"
"""


def _unit(config: Path, *modules: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "tandem.engine.cli", "unit", *modules,
            "--config-dir", str(config), "--state-dir", "/srv/st",
        ],
        capture_output=True,
        text=True,
    )  # fmt: skip


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "etc"
    (config / "modules").mkdir(parents=True)
    for name, port in (("web", 7500), ("db", 7600)):
        (config / "modules" / f"{name}.toml").write_text(MODULE.format(name=name, port=port))
    return config


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    config = _config(tmp_path)
    done = _unit(config, "web", "db")
    assert done.returncode == 0, done.stderr
    unit = tmp_path / "tandem.service"
    unit.write_text(done.stdout)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    assert "Type=notify" in done.stdout and "KillMode=mixed" in done.stdout
    assert f"node --config-dir {config} --state-dir /srv/st web db" in done.stdout


def test_no_unit_for_a_module_that_is_not_configured(tmp_path: Path) -> None:
    done = _unit(_config(tmp_path), "web", "nosuch")
    assert done.returncode == 1 and done.stdout == ""
    assert "nosuch" in done.stderr and "Traceback" not in done.stderr


def test_a_bad_module_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="module name"):
        unit_text(["web; rm -rf /"], "/etc/tandem", "/var/lib/tandem")


def test_systemd_accepts_the_template_and_the_api_unit(tmp_path: Path) -> None:
    config = _config(tmp_path)
    for flag, name in (("--template", "tandem@.service"), ("--api", "tandem-api.service")):
        done = _unit(config, flag)
        assert done.returncode == 0, done.stderr
        (tmp_path / name).write_text(done.stdout)
    template = (tmp_path / "tandem@.service").read_text()
    assert "--api none %i" in template and "WatchdogSec=30" in template
    assert (
        f"api --config-dir {config} --state-dir /srv/st"
        in (tmp_path / "tandem-api.service").read_text()
    )
    (tmp_path / "tandem@web.service").symlink_to(tmp_path / "tandem@.service")
    for unit in ("tandem@web.service", "tandem-api.service"):
        verified = subprocess.run(
            ["systemd-analyze", "verify", str(tmp_path / unit)], capture_output=True, text=True
        )
        assert verified.returncode == 0, verified.stderr
    refused = _unit(config, "--template", "web")
    assert refused.returncode == 1 and "take no module" in refused.stderr


def test_the_node_tells_systemd_every_module_s_state_in_one_status_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tandem.engine.config.secrets import SecretStore, write_secret
    from tandem.engine.node.supervisor import Node, watchdog_interval

    write_secret(tmp_path / "secret", b"k" * 32)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(5)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
    node = Node("a", [], SecretStore(tmp_path / "secret"), str(tmp_path / "secret"))
    node._state_changed("web", "PRIM", "serving; b follows (in sync)")
    assert listener.recv(512) == b"STATUS=web PRIM (serving; b follows (in sync))"
    node._state_changed("db", "ALONE", "the peer was lost; took over")
    assert listener.recv(512) == (
        b"STATUS=db ALONE (the peer was lost; took over); web PRIM (serving; b follows (in sync))"
    )
    listener.close()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_interval({}) is None
