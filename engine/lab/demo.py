"""`tandem demo`: the main job, end to end on this one machine.

Starts a two-node `tandem lab` with failover, runs a database application on the serving node
(SQLite in WAL mode with synchronous=FULL, plus reports published by atomic rename) that logs
every transaction it saw committed to a file outside the cluster, while a client on the network
writes to the demo key-value service at the virtual IP; crashes the serving node in the middle
of it; measures how long the client was without an answer; checks that the other node took over
(VIP, application) with every committed transaction, report and acknowledged write, and that
the crashed node, booted again, follows it as an up-to-date secondary.
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

from tandem.engine.lab.lab import APP_PORT, VIP, Lab

CRASH_AFTER_SECONDS = 4.0
APP = [sys.executable, "-m", "tandem.engine.lab.demoapp"]

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


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _first_answer_from(probe_log: Path, node: str, after: float) -> float | None:
    for line in probe_log.read_text().splitlines():
        stamp, answered = line.split()
        if answered == node and float(stamp) > after:
            return float(stamp)
    return None


def _kv_check(lab: Lab, acked_log: Path) -> dict[str, Any]:
    acked = acked_log.read_text().split()
    store = (lab.node_dir("b") / "data" / "store.log").read_text().splitlines()
    kept = {line.split(" ", 1)[0] for line in store if line}
    last = acked[-1] if acked else ""
    answer = subprocess.run(
        lab.exec_command("client", [*APP, "get", VIP, str(APP_PORT), last]),
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "writes_acknowledged_at_the_vip": len(acked),
        "acknowledged_writes_lost": len(set(acked) - kept),
        "last_write_read_back_at_the_vip": answer == f"VALUE v{last[1:]}",
    }


def run_demo(workdir: str | None, keep: bool = False) -> int:
    base = Path(workdir or tempfile.mkdtemp(prefix="tandem-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    lab = Lab.at(str(base / "lab"))
    log = base / "committed.log"  # the application's own record, outside the cluster
    acked_log, probe_log = base / "acked.log", base / "probe.log"
    for stale in (log, acked_log, probe_log):
        stale.unlink(missing_ok=True)
    print(f"1. starting a two-node lab with failover in {lab.directory}")
    print(lab.up(ack="applied", timeout=5.0))
    clients: list[subprocess.Popen[bytes]] = []
    try:
        print(
            "2. node a serves: a SQLite application (WAL, synchronous=FULL) on a, and a client "
            f"writing to the demo key-value service at the virtual IP {VIP}"
        )
        application = subprocess.Popen(
            lab.exec_command(
                "a", [sys.executable, "-c", APPLICATION, str(lab.shared_path), str(log)]
            )
        )
        for command in (
            [*APP, "client", VIP, str(APP_PORT), "--log", str(acked_log), "--seconds", "12"],
            [*APP, "probe", VIP, str(APP_PORT), "--out", str(probe_log), "--seconds", "12"],
        ):
            clients.append(
                subprocess.Popen(
                    lab.exec_command("client", command),
                    stdout=subprocess.DEVNULL,
                    start_new_session=True,
                )
            )
        started = time.monotonic()
        time.sleep(CRASH_AFTER_SECONDS)
        if application.poll() is not None:
            print(f"FAIL: the application stopped on its own (exit {application.returncode})")
            return 1
        print(
            f"3. crashing node a after {time.monotonic() - started:.1f} s "
            "(SIGKILL of every process, as a power cut)"
        )
        killed_at = time.monotonic()
        lab.kill("a")
        application.wait(30)
        deadline = time.monotonic() + 30
        while lab.serving_nodes() != ["b"] and time.monotonic() < deadline:
            time.sleep(0.05)
        for client in clients:
            client.wait(60)
        b_state = lab.module_state("b") or {}  # its takeover's actions are done by now
        print(f"4. node b: {b_state.get('state')} ({b_state.get('reason')})")
        answered = _first_answer_from(probe_log, "b", killed_at)
        check = base / "secondary-copy"
        shutil.rmtree(check, ignore_errors=True)
        # SQLite recovers its WAL in a scratch copy, leaving node b's copy as it is
        shutil.copytree(lab.node_dir("b") / "data", check, symlinks=True)
        result = verify_copy(check, log)
        result.update(_kv_check(lab, acked_log))
        result["failover_seconds"] = (
            round(answered - killed_at, 2) if answered is not None else None
        )
        result["vip_on_b"] = bool(b_state.get("vip_held"))
        print("5. node a boots again: it follows b and resyncs only what changed")
        lab.start("a")
        lab.settle()
        a_state = lab.module_state("a") or {}
        result["a_after_return"] = a_state.get("state")
        print(json.dumps(result, indent=2))
        ok = (
            result["transactions_committed_on_primary"] > 0
            and result["committed_transactions_lost"] == 0
            and result["reports_lost_or_damaged"] == 0
            and result["sqlite_integrity_check"] == "ok"
            and result["writes_acknowledged_at_the_vip"] > 0
            and result["acknowledged_writes_lost"] == 0
            and result["last_write_read_back_at_the_vip"]
            and result["failover_seconds"] is not None
            and result["vip_on_b"]
            and result["a_after_return"] == "SECOND"
        )
        print(
            f"PASS: b took over in {result['failover_seconds']} s with every transaction, report "
            "and acknowledged write; a came back as its secondary"
            if ok
            else "FAIL"
        )
        return 0 if ok else 1
    finally:
        for client in clients:
            if client.poll() is None:
                _kill_group(client.pid)
                client.wait()
        if keep:
            print(f"the lab is still up: tandem lab --dir {lab.directory} status")
        else:
            lab.down()
            print(f"lab removed; the client logs and the checked copy are in {base}")
