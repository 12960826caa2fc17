"""The systemd unit `tandem unit` prints: systemd's own checker accepts it, and it runs the
node in notify mode with the modules, directories and stop order the docs promise."""

from __future__ import annotations

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
