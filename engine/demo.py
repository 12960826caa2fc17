"""`tandem demo`: the main job, end to end on this one machine.

Starts a two-node `tandem lab`, runs a database application on the primary (SQLite in WAL mode
with synchronous=FULL, plus reports published by atomic rename) that logs every transaction it
saw committed to a file outside the cluster, crashes the primary node in the middle of it, and
checks that the secondary's copy opens, passes SQLite's integrity check and holds every
committed transaction and every published report.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .lab import Lab

CRASH_AFTER_SECONDS = 4.0

APPLICATION = r"""
import os, sqlite3, sys
root, log_path = sys.argv[1], sys.argv[2]
log = open(log_path, "a", buffering=1)
db = sqlite3.connect(f"{root}/orders.db", isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS orders(batch INT, item TEXT, qty INT)")
os.makedirs(f"{root}/reports", exist_ok=True)
batch = 0
while True:
    db.execute("BEGIN")
    for n in range(5):
        db.execute("INSERT INTO orders VALUES (?, ?, ?)", (batch, f"item-{batch}-{n}", n))
    db.execute("COMMIT")
    log.write(f"tx {batch}\n")
    if batch % 25 == 0:
        tmp = f"{root}/reports/.{batch}.tmp"
        with open(tmp, "w") as report:
            report.write(f"report {batch}\n" * 200)
            report.flush()
            os.fsync(report.fileno())
        os.rename(tmp, f"{root}/reports/{batch}.txt")
        log.write(f"report {batch}\n")
    batch += 1
"""


def verify_copy(copy: Path, log: Path) -> dict[str, Any]:
    transactions: list[int] = []
    reports: list[int] = []
    for line in log.read_text().splitlines():
        kind, number = line.split()
        (transactions if kind == "tx" else reports).append(int(number))
    db = sqlite3.connect(copy / "orders.db")
    integrity = db.execute("PRAGMA integrity_check").fetchone()[0]
    rows = dict(db.execute("SELECT batch, count(*) FROM orders GROUP BY batch").fetchall())
    db.close()
    lost = [t for t in transactions if rows.get(t) != 5]
    missing_reports = [
        r
        for r in reports
        if not (copy / "reports" / f"{r}.txt").exists()
        or (copy / "reports" / f"{r}.txt").read_text() != f"report {r}\n" * 200
    ]
    return {
        "transactions_committed_on_primary": len(transactions),
        "transactions_on_secondary": len(rows),
        "committed_transactions_lost": len(lost),
        "reports_published": len(reports),
        "reports_lost_or_damaged": len(missing_reports),
        "sqlite_integrity_check": integrity,
    }


def run_demo(workdir: str | None, keep: bool = False) -> int:
    base = Path(workdir or tempfile.mkdtemp(prefix="tandem-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    lab = Lab.at(str(base / "lab"))
    log = base / "committed.log"  # the client's own record, outside the cluster
    log.unlink(missing_ok=True)
    print(f"1. starting a two-node lab in {lab.directory}")
    print(lab.up(ack="applied", timeout=5.0, static=True))
    try:
        print("2. running the application on node a: SQLite WAL, synchronous=FULL, reports")
        command = lab.exec_command(
            "a", [sys.executable, "-c", APPLICATION, str(lab.shared_path), str(log)]
        )
        application = subprocess.Popen(command)
        started = time.monotonic()
        time.sleep(CRASH_AFTER_SECONDS)
        if application.poll() is not None:
            print(f"FAIL: the application stopped on its own (exit {application.returncode})")
            return 1
        print(
            f"3. crashing node a after {time.monotonic() - started:.1f} s (SIGKILL, every process)"
        )
        lab.kill("a")
        application.wait(30)
        check = base / "secondary-copy"
        shutil.rmtree(check, ignore_errors=True)
        # the secondary's copy is read-only; SQLite recovers its WAL in a scratch copy
        shutil.copytree(lab.node_dir("b") / "data", check, symlinks=True)
        print("4. opening node b's copy of the directory")
        result = verify_copy(check, log)
        print(json.dumps(result, indent=2))
        ok = (
            result["transactions_committed_on_primary"] > 0
            and result["committed_transactions_lost"] == 0
            and result["reports_lost_or_damaged"] == 0
            and result["sqlite_integrity_check"] == "ok"
        )
        print(
            "PASS: the secondary holds every transaction and report the application saw committed"
            if ok
            else "FAIL"
        )
        return 0 if ok else 1
    finally:
        if keep:
            print(f"the lab is still up: tandem lab --dir {lab.directory} status")
        else:
            lab.down()
            print(f"lab removed; the client log and the checked copy are in {base}")
