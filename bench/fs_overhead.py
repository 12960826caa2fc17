"""What the in-place passthrough costs: one run measures a plain directory and the same kind of
directory with `tandem mount` over it (no peer: the sink that does nothing), once per FUSE
driver (python, the reference; native, the C data plane), beside "floor", a minimal C
passthrough of our own (`bench/floor_c/`, what FUSE alone costs here), and prints JSON with the
figures and their ratios to the plain directory and to the floor.

    python -m tandem.bench.fs_overhead [--out FILE] [--quick] [--drivers floor,python,native]

Workloads: sequential 1 MiB writes then fsync; 4 KiB random writes with and without fsync after
each, 4 KiB random reads (fio, psync engine, one job; reads also with four jobs); SQLite
one-row transactions (WAL, synchronous=FULL); create then delete 10,000 small files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.bench import floor
from tandem.fsdriver.driver import DRIVERS, ENVIRONMENT_VARIABLE
from tandem.fsdriver.mount import is_tandem_mount


def _fio(
    directory: Path, name: str, seconds: int, extra: list[str], jobs: int = 1, side: str = "write"
) -> dict[str, float]:
    args = [
        "fio", f"--name={name}", f"--directory={directory}", "--ioengine=psync",
        f"--numjobs={jobs}", "--size=64m", f"--runtime={seconds}", "--time_based",
        "--output-format=json", "--group_reporting", *extra,
    ]  # fmt: skip
    done = subprocess.run(args, capture_output=True, text=True, check=True)
    job = json.loads(done.stdout)["jobs"][0][side]
    return {"iops": round(job["iops"], 1), "mib_per_s": round(job["bw_bytes"] / 2**20, 1)}


def sequential_1mib(directory: Path, total_mib: int) -> dict[str, float]:
    block = os.urandom(1 << 20)
    path = directory / "sequential.bin"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(total_mib):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    elapsed = time.perf_counter() - started
    path.unlink()
    return {"mib_per_s": round(total_mib / elapsed, 1), "seconds": round(elapsed, 3)}


def random_4k(directory: Path, seconds: int, fsync_each: bool, jobs: int = 1) -> dict[str, float]:
    extra = ["--rw=randwrite", "--bs=4k"] + (["--fsync=1"] if fsync_each else [])
    result = _fio(directory, "rand", seconds, extra, jobs)
    for leftover in directory.glob("rand*"):
        leftover.unlink()
    return result


def random_4k_reads(directory: Path, seconds: int, jobs: int) -> dict[str, float]:
    # the file is laid out (and cached) first: this measures the request path, not the disk
    extra = ["--rw=randread", "--bs=4k"]
    result = _fio(directory, "read", seconds, extra, jobs, side="read")
    for leftover in directory.glob("read*"):
        leftover.unlink()
    return result


def sqlite_transactions(directory: Path, seconds: float) -> dict[str, float]:
    import sqlite3

    path = directory / "bench.db"
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
        payload = os.urandom(100)
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            db.execute("BEGIN")
            db.execute("INSERT INTO t (v) VALUES (?)", (payload,))
            db.execute("COMMIT")
            count += 1
        elapsed = time.perf_counter() - started
    finally:
        db.close()
    for leftover in directory.glob("bench.db*"):
        leftover.unlink()
    return {"tx_per_s": round(count / elapsed, 1)}


def small_files(directory: Path, count: int) -> dict[str, float]:
    names = [directory / f"f{i:05}" for i in range(count)]
    payload = b"x" * 100
    started = time.perf_counter()
    for name in names:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, payload)
        os.close(fd)
    created = time.perf_counter()
    for name in names:
        os.unlink(name)
    deleted = time.perf_counter()
    return {
        "creates_per_s": round(count / (created - started), 1),
        "deletes_per_s": round(count / (deleted - created), 1),
    }


def _mounted(directory: Path, driver: str | None = None) -> subprocess.Popen[bytes]:
    """`tandem mount` over ``directory``; ``driver`` None keeps this process's choice."""
    environment = dict(os.environ)
    if driver is not None:
        environment[ENVIRONMENT_VARIABLE] = driver
    process = subprocess.Popen(
        [sys.executable, "-m", "tandem.engine.cli", "mount", str(directory)],
        stderr=subprocess.DEVNULL,
        env=environment,
    )
    deadline = time.monotonic() + 20
    while not is_tandem_mount(str(directory)):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("tandem mount did not come up")
        time.sleep(0.05)
    return process


def _ratio(mount: dict[str, float], plain: dict[str, float]) -> dict[str, float]:
    return {k: round(mount[k] / plain[k], 3) for k in mount if k != "seconds" and plain.get(k)}


def _settle() -> None:
    # Deleting files makes this VM's disk discard blocks for seconds afterwards; without a
    # pause the next workload would measure that, not the file system.
    os.sync()
    time.sleep(2)


def _serve(
    kind: str, base: Path, floor_binary: Path | None
) -> tuple[Path, subprocess.Popen[bytes]]:
    """Where to run a workload for ``kind`` and the process serving it."""
    if kind == "floor":
        assert floor_binary is not None
        source, mountpoint = base / "floor-source", base / "floor"
        source.mkdir(exist_ok=True)
        mountpoint.mkdir(exist_ok=True)
        return mountpoint, floor.mount(floor_binary, source, mountpoint)
    mounted = base / "mounted"
    return mounted, _mounted(mounted, kind)


def run(base: Path, quick: bool, drivers: list[str]) -> dict[str, Any]:
    seconds = 3 if quick else 10
    workloads: dict[str, Callable[[Path], dict[str, float]]] = {
        "sequential_1mib_writes_then_fsync": lambda d: sequential_1mib(d, 128 if quick else 512),
        "random_4k_writes": lambda d: random_4k(d, seconds, fsync_each=False),
        "random_4k_writes_fsync_each": lambda d: random_4k(d, seconds, fsync_each=True),
        "random_4k_reads": lambda d: random_4k_reads(d, seconds, jobs=1),
        "random_4k_reads_4_jobs": lambda d: random_4k_reads(d, seconds, jobs=4),
        "sqlite_transactions": lambda d: sqlite_transactions(d, seconds),
        "create_then_delete_small_files": lambda d: small_files(d, 2000 if quick else 10_000),
    }
    plain, mounted = base / "plain", base / "mounted"
    plain.mkdir()
    mounted.mkdir()
    floor_binary = floor.build(base) if "floor" in drivers else None
    results: dict[str, Any] = {}
    for name, workload in workloads.items():
        _settle()
        baseline = workload(plain)
        line: dict[str, Any] = {"plain": baseline, "ratio": {}}
        for driver in drivers:
            where, process = _serve(driver, base, floor_binary)
            try:
                _settle()
                through_mount = workload(where)
            finally:
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            line[driver] = through_mount
            line["ratio"][driver] = _ratio(through_mount, baseline)
        if "floor" in drivers:
            line["ratio_to_floor"] = {
                d: _ratio(line[d], line["floor"]) for d in drivers if d != "floor"
            }
        results[name] = line
    return results


def run_on(kind: str, parent: str, quick: bool, drivers: list[str]) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="tandem-bench-", dir=parent))
    try:
        if kind == "tmpfs":
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "size=3g", "tandem-bench", str(base)], check=True
            )
        try:
            return {"filesystem": _fstype(base), "results": run(base, quick, drivers)}
        finally:
            if kind == "tmpfs":
                subprocess.run(["umount", str(base)], check=True)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _fstype(path: Path) -> str:
    found = subprocess.run(
        ["findmnt", "-no", "FSTYPE", "--target", str(path)], capture_output=True, text=True
    )
    return found.stdout.strip()


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """The options every benchmark takes."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("--quick", action="store_true", help="smaller sizes, shorter runs")
    parser.add_argument("--dir", default="/var/tmp", help="where to create the test directories")
    return parser


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def emit(report: dict[str, Any], out: str | None) -> None:
    text = json.dumps(report, indent=2)
    print(text)
    if out:
        Path(out).write_text(text + "\n")


def main() -> int:
    parser = bench_parser(__doc__)
    kinds = ("floor", *DRIVERS)
    parser.add_argument(
        "--drivers",
        default=",".join(kinds),
        help=f"comma-separated mounts to measure (default: {','.join(kinds)})",
    )
    args = parser.parse_args()
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    unknown = [d for d in drivers if d not in kinds]
    if unknown or not drivers:
        print(f"fs_overhead: unknown driver(s) {unknown}: expected {kinds}", file=sys.stderr)
        return 2
    if shutil.which("fio") is None:
        print("fs_overhead: fio is not installed (bash .ci/setup installs it)", file=sys.stderr)
        return 1
    report = {
        "benchmark": "fs_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        # disk: what users get; tmpfs: the same without disk noise, i.e. the passthrough's own cost
        "drivers": drivers,
        "disk": run_on("disk", args.dir, args.quick, drivers),
        "tmpfs": run_on("tmpfs", args.dir, args.quick, drivers),
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
