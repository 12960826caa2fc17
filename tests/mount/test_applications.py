"""Real applications on the mount: SQLite (WAL, synchronous=FULL) and a PostgreSQL cluster run by
the postgres user. Each run's mutation stream, replayed onto a copy, must give the same files."""

from __future__ import annotations

import os
import pwd
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tandem.engine.replica.replay import replay_recording
from tests.conftest import Mounted, start_mount
from tests.helpers.treediff import diff, snapshot

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]


def _replay_onto(record: Path, replica: Path) -> int:
    replica.mkdir()
    return replay_recording(record.read_text().splitlines(), replica)


def test_sqlite_wal_full_sync_works_and_replays(workspace: Path, mounted: Mounted) -> None:
    db_path = mounted.path / "app.db"
    db = sqlite3.connect(db_path, isolation_level=None)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal"
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t(id INTEGER PRIMARY KEY, payload BLOB)")
    for i in range(300):
        db.execute("BEGIN")
        db.execute("INSERT INTO t(payload) VALUES (?)", (os.urandom(100 + i),))
        if i % 7 == 0:
            db.execute("DELETE FROM t WHERE id = ?", (i // 2,))
        db.execute("COMMIT")
    # a second connection reads through the shared-memory index (-shm, a shared mmap)
    reader = sqlite3.connect(db_path)
    expected_rows = reader.execute("SELECT count(*) FROM t").fetchone()[0]
    assert reader.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    reader.close()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    live = snapshot(str(mounted.path), times=True)
    mounted.stop()

    replica = workspace / "replica"
    assert _replay_onto(mounted.record, replica) > 300
    assert diff(live, snapshot(str(replica), times=True)) == []
    copy = sqlite3.connect(replica / "app.db")
    assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert copy.execute("SELECT count(*) FROM t").fetchone()[0] == expected_rows
    copy.close()


def _pg_bin(name: str) -> str:
    for candidate in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), reverse=True):
        return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} not installed (.ci/setup installs postgresql)"
    return found


def _as_postgres(args: list[str], cwd: Path, timeout: float = 300) -> str:
    pg = pwd.getpwnam("postgres")

    def drop_privileges() -> None:
        os.setgroups([])
        os.setgid(pg.pw_gid)
        os.setuid(pg.pw_uid)

    done = subprocess.run(
        args, cwd=cwd, preexec_fn=drop_privileges, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"{args[0]} failed: {done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def test_postgresql_initdb_and_pgbench(workspace: Path) -> None:
    pg = pwd.getpwnam("postgres")
    mount = start_mount(workspace / "pgdata-mount")
    sockets = workspace / "sockets"
    sockets.mkdir()
    try:
        os.chown(mount.path, pg.pw_uid, pg.pw_gid)
        os.chown(sockets, pg.pw_uid, pg.pw_gid)
        data = mount.path / "cluster"
        _as_postgres(
            [_pg_bin("initdb"), "-D", str(data), "--no-instructions", "-A", "trust"], workspace
        )
        options = (
            f"-k {sockets} -c listen_addresses='' -p 54329 -c fsync=on -c synchronous_commit=on"
        )
        _as_postgres(
            [
                _pg_bin("pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-w",
                "-l",
                str(sockets / "log"),
                "start",
            ],
            workspace,
        )
        try:
            bench = [_pg_bin("pgbench"), "-h", str(sockets), "-p", "54329", "postgres"]
            _as_postgres([*bench[:-1], "-i", "-s", "1", "postgres"], workspace)
            out = _as_postgres([*bench[:-1], "-c", "2", "-t", "200", "postgres"], workspace)
            assert "number of transactions actually processed: 400/400" in out, out
            psql = [_pg_bin("psql"), "-h", str(sockets), "-p", "54329", "-At", "-c"]
            count = _as_postgres(
                [*psql, "SELECT count(*) FROM pgbench_history", "postgres"], workspace
            )
            assert count.strip() == "400"
            _as_postgres([*psql, "CHECKPOINT", "postgres"], workspace)
        finally:
            _as_postgres(
                [_pg_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], workspace
            )
        live = snapshot(str(mount.path), times=True)
    finally:
        mount.stop()
    replica = workspace / "replica"
    _replay_onto(mount.record, replica)
    assert diff(live, snapshot(str(replica), times=True)) == []
