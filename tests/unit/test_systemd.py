"""The systemd unit `tandem unit` prints: systemd's own checker accepts it, and it runs the
node in notify mode with the modules, directories and stop order the docs promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tandem.engine.config.modules import ConfigError
from tandem.engine.node.systemd import unit_text


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tandem.engine.cli", "unit", "web", "db", "--state-dir", "/srv/st"],
        capture_output=True,
        text=True,
        check=True,
    )
    unit = tmp_path / "tandem.service"
    unit.write_text(done.stdout)
    verified = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True
    )
    assert verified.returncode == 0, verified.stderr
    assert "Type=notify" in done.stdout and "KillMode=mixed" in done.stdout
    assert "node --config-dir /etc/tandem --state-dir /srv/st web db" in done.stdout


def test_a_bad_module_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="module name"):
        unit_text(["web; rm -rf /"], "/etc/tandem", "/var/lib/tandem")
