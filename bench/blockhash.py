"""Block-hash scan rate against the disk's own sequential read rate (the reintegration target:
hash-comparing identical data at >= 80% of reading it), in one run, caches dropped before each
measurement.

    python -m tandem.bench.blockhash [--quick] [--dir /var/tmp] [--out FILE]

Measures, on the same file: ``cat FILE > /dev/null`` (the baseline), the C scanner, and the
pure-Python reference, at 4 KiB blocks. The file is written with incompressible data and synced
first; ``/proc/sys/vm/drop_caches`` (root) makes each pass read from the disk.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tandem.bench.fs_overhead import bench_parser, emit, machine
from tandem.native.blockhash import hash_blocks_c, hash_blocks_python

BLOCK = 4096


def _drop_caches() -> bool:
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def _make_file(path: Path, size: int) -> None:
    chunk = os.urandom(1 << 20)
    with path.open("wb") as f:
        for index in range(size >> 20):
            # vary each MiB so nothing below us can deduplicate or compress it away
            f.write(index.to_bytes(8, "little") + chunk[8:])
        f.flush()
        os.fsync(f.fileno())


def _rate(size: int, seconds: float) -> dict[str, float]:
    return {"seconds": round(seconds, 3), "mib_per_s": round(size / (1 << 20) / seconds, 1)}


def _cat(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def _scan(path: Path, scanner: Any) -> float:
    fd = os.open(path, os.O_RDONLY)
    try:
        start = time.perf_counter()
        scanner(fd, 0, os.fstat(fd).st_size, BLOCK)
        return time.perf_counter() - start
    finally:
        os.close(fd)


def run(directory: Path, quick: bool) -> dict[str, Any]:
    size = (256 if quick else 2048) << 20
    with tempfile.TemporaryDirectory(dir=directory, prefix="tandem-bench-hash-") as scratch:
        path = Path(scratch) / "data"
        _make_file(path, size)
        measures = {
            "cat": _cat,
            "c_scanner": lambda p: _scan(p, hash_blocks_c),
            "python_reference": lambda p: _scan(p, hash_blocks_python),
        }
        # a virtual disk's rate wanders: interleave the three, several rounds, take medians
        seconds: dict[str, list[float]] = {name: [] for name in measures}
        cold = True
        for _ in range(1 if quick else 5):
            for name, measure in measures.items():
                cold = _drop_caches() and cold
                seconds[name].append(measure(path))
        figures = {name: _rate(size, statistics.median(times)) for name, times in seconds.items()}
    ratio = figures["c_scanner"]["mib_per_s"] / figures["cat"]["mib_per_s"]
    return {
        "benchmark": "blockhash",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "quick": quick,
        "file_mib": size >> 20,
        "rounds": len(seconds["cat"]),
        "block_size": BLOCK,
        "caches_dropped": cold,
        "figures": figures,
        "ratios": {"c_scanner_vs_cat": round(ratio, 3)},
        "targets": {
            "hash_compare_at_least_0.8_of_sequential_read": {
                "value": round(ratio, 3),
                "met": ratio >= 0.8,
            }
        },
    }


def main() -> int:
    args = bench_parser(__doc__).parse_args()
    emit(run(Path(args.dir), args.quick), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
