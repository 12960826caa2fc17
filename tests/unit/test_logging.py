"""Log lines an operator and journald can read: a severity on every line, the time with its
zone, no second timestamp under journald (its priority prefix instead), and a module log that
rotates instead of filling the disk."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tandem.engine.failover.module_log import KEPT, ModuleLog

SAY = (
    "from tandem.engine.cli.logsetup import configure; configure(False); import logging; "
    "logging.getLogger('tandem.x').warning('hello')"
)


def _said(journal: bool) -> str:
    read, write = os.pipe()
    status = os.fstat(write)
    env = {**os.environ, "JOURNAL_STREAM": f"{status.st_dev}:{status.st_ino}" if journal else ""}
    subprocess.run([sys.executable, "-c", SAY], stderr=write, env=env, check=True, timeout=60)
    os.close(write)
    with os.fdopen(read) as said:
        return said.read()


def test_a_terminal_or_a_file_gets_the_time_with_its_zone_and_the_severity() -> None:
    line = _said(journal=False).rstrip("\n")
    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}"
    assert re.fullmatch(stamp + r" tandem\.x WARNING hello", line), line


def test_journald_gets_a_priority_and_no_timestamp_of_ours() -> None:
    assert _said(journal=True) == "<4>tandem.x WARNING hello\n"


def test_the_module_log_rotates_and_keeps_a_bounded_history(tmp_path: Path) -> None:
    path = tmp_path / "module.log"
    log = ModuleLog(str(path), rotate_at=200)
    for n in range(100):
        log.note(f"SECOND -> ALONE: event {n}")
    kept = {p.name for p in tmp_path.iterdir()}
    rotated = {f"module.log.{i}" for i in range(1, KEPT + 1)}
    assert rotated <= kept <= rotated | {"module.log"}  # the oldest beyond KEPT are gone
    assert all(p.stat().st_size < 200 + 100 for p in tmp_path.iterdir())
    log.note("SECOND -> ALONE: the newest")
    newest = path.read_text().splitlines()[-1]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\S+[+-]\d{4} SECOND -> ALONE: the newest", newest)
    assert "event 99" in (tmp_path / "module.log.1").read_text() + path.read_text()
