"""`tandem demo`: the passthrough end to end on this machine.

Mounts Tandem in place over an application directory, runs a database workload on it, then
replays the captured mutation stream onto a copy taken before the workload and shows that the
copy ends identical: what a secondary node will receive and do.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tandem.fsdriver.mount import is_tandem_mount
from tandem.fsdriver.replay import replay_recording

from .treediff import diff, snapshot


def _wait_mounted(path: Path, process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not is_tandem_mount(str(path)):
        if process.poll() is not None:
            raise RuntimeError(f"tandem mount exited with {process.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} was not mounted within {timeout}s")
        time.sleep(0.05)


def _workload(data: Path) -> dict[str, Any]:
    """An application at work: a SQLite database in WAL mode with full sync, plus plain files."""
    db = sqlite3.connect(data / "orders.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, item TEXT, qty INT)")
    committed = 0
    for batch in range(200):
        db.execute("BEGIN")
        for n in range(5):
            db.execute("INSERT INTO orders(item, qty) VALUES (?, ?)", (f"item-{batch}-{n}", n))
        db.execute("COMMIT")
        committed += 5
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    (data / "reports").mkdir(exist_ok=True)
    for day in range(20):
        report = data / "reports" / f"day-{day:02}.txt.tmp"
        report.write_text(f"report {day}\n" * 100)
        report.rename(report.with_suffix(""))  # atomic publish, as applications do
    (data / "reports" / "day-00.txt").unlink()
    os.link(data / "reports" / "day-01.txt", data / "reports" / "latest.txt")
    os.symlink("reports/latest.txt", data / "latest")
    os.setxattr(data / "orders.db", "user.owner", b"shop")
    return {"transactions_committed": committed // 5, "rows_committed": committed}


def run_demo(workdir: str | None) -> int:
    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="tandem-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    data, replica, stream = base / "app-data", base / "replica", base / "mutations.jsonl"
    for leftover in (data, replica):
        shutil.rmtree(leftover, ignore_errors=True)
    stream.unlink(missing_ok=True)
    data.mkdir()
    (data / "README").write_text("files the application had before Tandem was mounted\n")
    shutil.copytree(data, replica, symlinks=True)  # the peer's copy, in sync before we start

    print(f"1. mounting Tandem in place over {data}")
    cmd = [sys.executable, "-m", "tandem.engine.cli", "mount", str(data), "--record", str(stream)]
    mount = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
    try:
        _wait_mounted(data, mount)
        print("2. running the workload (SQLite WAL, synchronous=FULL; files, renames, links)")
        started = time.monotonic()
        result = _workload(data)
        result["workload_seconds"] = round(time.monotonic() - started, 3)
        through_mount = snapshot(str(data), times=True)
    finally:
        mount.send_signal(signal.SIGTERM)
        mount.wait(30)
    print("3. unmounted; replaying the captured mutation stream onto the copy")
    applied = replay_recording(stream.read_text().splitlines(), replica)
    differences = diff(through_mount, snapshot(str(replica), times=True))
    check = sqlite3.connect(replica / "orders.db")
    rows = check.execute("SELECT count(*) FROM orders").fetchone()[0]
    integrity = check.execute("PRAGMA integrity_check").fetchone()[0]
    check.close()
    result |= {
        "mutations": applied,
        "replica_identical": not differences,
        "replica_rows": rows,
        "replica_integrity": integrity,
        "workdir": str(base),
    }
    print("4. results")
    print(json.dumps(result, indent=2))
    for line in differences[:20]:
        print(f"   difference: {line}")
    ok = not differences and rows == result["rows_committed"] and integrity == "ok"
    print("PASS: the copy holds every committed row, byte for byte" if ok else "FAIL")
    return 0 if ok else 1
