"""Databases on the primary of a real lab, the primary node killed mid-workload: the secondary's
copy opens, passes the database's own integrity check, and holds every transaction the client
saw committed."""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tandem.engine.lab.demo import APPLICATION, verify_copy
from tests.helpers.lab import LabCluster, stop_group
from tests.helpers.mountproc import wait_for
from tests.mount.test_applications import _as_postgres, _pg_bin

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]


@pytest.mark.parametrize("attempt", range(2))
def test_sqlite_commits_survive_a_crash_of_the_primary(
    lab: LabCluster, workspace: Path, attempt: int
) -> None:
    log = workspace / "committed.log"
    app = lab.popen("a", sys.executable, "-c", APPLICATION, str(lab.path), str(log))
    try:
        wait_for(lambda: log.exists() and log.stat().st_size > 0, 30, "a first commit")
        time.sleep(random.uniform(0.3, 2.5))
        lab.kill("a")
    finally:
        stop_group(app)
    check = workspace / "check"
    shutil.copytree(lab.copy("b"), check, symlinks=True)  # SQLite recovers its WAL in a copy
    result = verify_copy(check, log)
    assert result["sqlite_integrity_check"] == "ok"
    assert result["transactions_committed_on_primary"] > 0
    assert result["committed_transactions_lost"] == 0, result
    assert result["reports_lost_or_damaged"] == 0, result


def _committing_client(
    lab: LabCluster, psql: list[str], log: Path, stop: threading.Event
) -> subprocess.Popen[str]:
    """One psql session on node a, fed INSERTs; each id it prints back was committed."""
    client = lab.popen(
        "a", *psql, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
    )
    assert client.stdin is not None and client.stdout is not None

    def feed() -> None:
        try:
            for n in range(1_000_000):
                if stop.is_set():
                    break
                client.stdin.write(f"INSERT INTO orders VALUES ({n}) RETURNING id;\n")  # type: ignore[union-attr]
                client.stdin.flush()  # type: ignore[union-attr]
                time.sleep(0.002)
        except (BrokenPipeError, ValueError, OSError):
            pass

    def record() -> None:
        with open(log, "a", buffering=1) as out:
            for line in client.stdout:  # type: ignore[union-attr]
                if line.strip().isdigit():
                    out.write(line)

    threading.Thread(target=feed, daemon=True).start()
    threading.Thread(target=record, daemon=True).start()
    return client


def test_postgresql_commits_survive_a_crash_of_the_primary(
    lab: LabCluster, workspace: Path
) -> None:
    pg = pwd.getpwnam("postgres")
    sockets = workspace / "pg-a"
    sockets.mkdir()
    os.chown(sockets, pg.pw_uid, pg.pw_gid)
    data = lab.path / "pgdata"
    as_postgres = ["runuser", "-u", "postgres", "--"]
    assert lab.exec("a", "chown", "postgres:postgres", str(lab.path)).returncode == 0
    initdb = [_pg_bin("initdb"), "-D", str(data), "--no-instructions", "-A", "trust", "-k"]
    done = lab.exec("a", *as_postgres, *initdb, cwd="/")
    assert done.returncode == 0, done.stderr
    options = f"-k {sockets} -c listen_addresses='' -p 5432 -c fsync=on -c synchronous_commit=on"
    start = [_pg_bin("pg_ctl"), "-D", str(data), "-o", options, "-w", "-l", f"{sockets}/log"]
    done = lab.exec("a", *as_postgres, *start, "start", cwd="/")
    assert done.returncode == 0, done.stdout + done.stderr
    connect = ["-h", str(sockets), "-p", "5432"]
    psql = [*as_postgres, _pg_bin("psql"), *connect, "-At", "-v", "ON_ERROR_STOP=1", "postgres"]
    done = lab.exec("a", *psql, "-c", "CREATE TABLE orders(id int PRIMARY KEY)", cwd="/")
    assert done.returncode == 0, done.stderr
    bench = [*as_postgres, _pg_bin("pgbench"), *connect]
    assert lab.exec("a", *bench, "-i", "-s", "2", "postgres", cwd="/").returncode == 0

    log = workspace / "committed.log"
    stop = threading.Event()
    load = lab.popen("a", *bench, "-c", "2", "-T", "60", "postgres", stdout=subprocess.DEVNULL)
    client = _committing_client(lab, psql, log, stop)
    try:
        wait_for(lambda: log.exists() and len(log.read_text().split()) > 20, 60, "commits")
        time.sleep(random.uniform(0.5, 2.0))
        lab.kill("a")
    finally:
        stop.set()
        stop_group(load)
        stop_group(client)
    committed = [int(n) for n in log.read_text().split()]

    # the secondary's copy, started as a failover would start it
    copy = workspace / "pg-copy"
    shutil.copytree(lab.copy("b") / "pgdata", copy, symlinks=True)
    subprocess.run(["chown", "-R", "postgres:postgres", str(copy)], check=True)
    copy.chmod(0o700)
    check_sockets = workspace / "pg-check"
    check_sockets.mkdir()
    os.chown(check_sockets, pg.pw_uid, pg.pw_gid)
    options = f"-k {check_sockets} -c listen_addresses='' -p 5433"
    pg_ctl = [_pg_bin("pg_ctl"), "-D", str(copy)]
    _as_postgres([*pg_ctl, "-o", options, "-w", "-l", f"{check_sockets}/log", "start"], workspace)
    try:
        query = [_pg_bin("psql"), "-h", str(check_sockets), "-p", "5433", "-At", "-c"]
        present = set(
            map(int, _as_postgres([*query, "SELECT id FROM orders", "postgres"], workspace).split())
        )
        lost = [n for n in committed if n not in present]
        assert committed and not lost, f"{len(lost)} of {len(committed)} commits lost: {lost[:5]}"
        amcheck = [_pg_bin("pg_amcheck"), "-h", str(check_sockets), "-p", "5433"]
        _as_postgres([*amcheck, "--install-missing", "--heapallindexed", "postgres"], workspace)
        print(f"{len(committed)} commits seen by the client, all on the secondary")
    finally:
        _as_postgres([*pg_ctl, "-m", "immediate", "-w", "stop"], workspace)
