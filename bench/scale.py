"""What a large tree costs the mount: FILES files in DIRS directories, made on the backing
directory first, then every one of them looked up (stat) through the mount, once per FUSE
driver (and through the C floor, `bench/floor_c`, for what libfuse's own path table costs).
Reported at each tenth: the mount process's resident memory and open descriptors, the stat
rate; then, with every file known to the mount, the rate of creating and of stat'ing more —
against the same operations on the plain directory. JSON, like the other benchmarks.

    python -m tandem.bench.scale [--files N] [--dirs D] [--drivers floor,python,native]
                                 [--quick] [--out FILE] [--dir DIR]

Issue 15's target: a million files looked up cost the mount at most 300 MB, never a failure for
lack of descriptors, and creates and stats keep their rate at that size.
"""

from __future__ import annotations

import errno
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tandem.bench import floor
from tandem.bench.fs_overhead import _fstype, _serve, bench_parser, emit, machine

CHECKPOINTS = 10
EXTRA = 2000  # files created, and files stat'ed again, once the whole tree is known


def _names(files: int, dirs: int) -> list[tuple[str, str]]:
    per_dir = -(-files // dirs)
    return [(f"d{i // per_dir:04d}", f"f{i % per_dir:06d}") for i in range(files)]


def _make_tree(root: Path, names: list[tuple[str, str]]) -> float:
    started = time.perf_counter()
    made: set[str] = set()
    for directory, name in names:
        if directory not in made:
            (root / directory).mkdir()
            made.add(directory)
        os.close(os.open(root / directory / name, os.O_WRONLY | os.O_CREAT, 0o644))
    return len(names) / (time.perf_counter() - started)


def _memory_and_descriptors(pid: int) -> tuple[int, int]:
    """Resident bytes and open descriptors of ``pid``, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return rss_kib << 10, len(os.listdir(f"/proc/{pid}/fd"))


def _stat_all(
    where: Path, names: list[tuple[str, str]], pid: int | None
) -> tuple[list[dict[str, float]], int]:
    """Every name stat'ed once, in order; a checkpoint at each tenth; failures counted."""
    checkpoints = []
    failures = 0
    step = max(1, len(names) // CHECKPOINTS)
    started = time.perf_counter()
    for start in range(0, len(names), step):
        slice_started = time.perf_counter()
        for directory, name in names[start : start + step]:
            try:
                os.stat(where / directory / name)
            except OSError as exc:
                failures += 1
                if exc.errno == errno.EMFILE:
                    raise RuntimeError(f"out of descriptors after {start} files") from exc
        elapsed = time.perf_counter() - slice_started
        point: dict[str, float] = {
            "files_looked_up": min(start + step, len(names)),
            "stats_per_s": round(min(step, len(names) - start) / elapsed, 1),
            "seconds_so_far": round(time.perf_counter() - started, 1),
        }
        if pid is not None:
            rss, fds = _memory_and_descriptors(pid)
            point["rss_mib"] = round(rss / 2**20, 1)
            point["open_descriptors"] = fds
        checkpoints.append(point)
    return checkpoints, failures


def _at_size(where: Path, names: list[tuple[str, str]]) -> dict[str, float]:
    """With the whole tree known: creates in the fullest directory, stats of known files."""
    directory = where / names[0][0]
    started = time.perf_counter()
    for i in range(EXTRA):
        os.close(os.open(directory / f"extra{i:05d}", os.O_WRONLY | os.O_CREAT, 0o644))
    creates = EXTRA / (time.perf_counter() - started)
    sample = random.Random(15).sample(names, min(EXTRA, len(names)))
    time.sleep(1.1)  # past the kernel's attribute timeout: the stats reach the mount
    started = time.perf_counter()
    for parent, name in sample:
        os.stat(where / parent / name)
    stats = len(sample) / (time.perf_counter() - started)
    for i in range(EXTRA):
        os.unlink(directory / f"extra{i:05d}")
    return {"creates_per_s": round(creates, 1), "stats_per_s": round(stats, 1)}


def run(base: Path, files: int, dirs: int, drivers: list[str]) -> dict[str, Any]:
    names = _names(files, dirs)
    tree = base / "mounted"  # where `_serve` mounts the drivers
    tree.mkdir()
    results: dict[str, Any] = {"made_per_s": round(_make_tree(tree, names), 1)}
    os.sync()
    checkpoints, failures = _stat_all(tree, names, None)
    results["plain"] = {"lookups": checkpoints, "failures": failures, **_at_size(tree, names)}
    floor_binary = floor.build(base) if "floor" in drivers else None
    for driver in drivers:
        if driver == "floor":
            tree.rename(base / "floor-source")  # the floor serves its source elsewhere
        where, process = _serve(driver, base, floor_binary)
        try:
            idle_rss, idle_fds = _memory_and_descriptors(process.pid)
            checkpoints, failures = _stat_all(where, names, process.pid)
            at_size = _at_size(where, names)
            rss, fds = _memory_and_descriptors(process.pid)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(120)
            if driver == "floor":
                (base / "floor-source").rename(tree)
        results[driver] = {
            "idle_rss_mib": round(idle_rss / 2**20, 1),
            "idle_descriptors": idle_fds,
            "lookups": checkpoints,
            "failures": failures,
            "rss_mib_at_size": round(rss / 2**20, 1),
            "descriptors_at_size": fds,
            "bytes_per_file": round((rss - idle_rss) / files),
            **at_size,
            "ratio_to_plain": {
                key: round(at_size[key] / results["plain"][key], 3) for key in at_size
            },
        }
    return results


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--files", type=int, default=1_000_000)
    parser.add_argument("--dirs", type=int, default=1000)
    parser.add_argument("--drivers", default="floor,python,native")
    args = parser.parse_args()
    files = 100_000 if args.quick else args.files
    drivers = [d.strip() for d in args.drivers.split(",") if d.strip()]
    base = Path(tempfile.mkdtemp(prefix="tandem-scale-", dir=args.dir))
    started = time.time()
    try:
        results = run(base, files, args.dirs, drivers)
        filesystem = _fstype(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    emit(
        {
            "benchmark": "scale",
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "machine": machine() | {"filesystem": filesystem},
            "files": files,
            "dirs": args.dirs,
            "descriptor_limit": os.sysconf("SC_OPEN_MAX"),
            "results": results,
            "target": "at most 300 MB for 1,000,000 files looked up; no failure; rates kept",
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
