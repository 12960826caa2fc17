"""What reintegration costs, in one run on a `tandem lab` pair, with rsync as the reference:

  1. a 2 GiB file of which 1 % of its 4 KiB blocks changed while the secondary was away:
     Tandem with its journal (tracked), Tandem forced to compare by hashes (`resync --full`),
     and `rsync --inplace --no-whole-file --ignore-times` (its daemon on node b, its client on
     node a): time and
     bytes on the wire (node a's network interface counter);
  2. 10 GiB of identical data: `tandem verify` rate against `cat` of the same files;
  3. 1,000,000 small files of which 0.1 % changed while the secondary was away: the time from
     the secondary's boot to "in sync".

    python -m tandem.bench.resync [--out FILE] [--quick] [--dir DIR]

Page caches are dropped before every timed step, so each one reads from the disk.
`--quick`: 256 MiB, 1 GiB, 100,000 files.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tandem.bench.fs_overhead import bench_parser, emit, machine
from tandem.engine.lab.lab import Lab

GIB = 1 << 30
MIB = 1 << 20
BLOCK = 4096
RSYNC_PORT = 8730


def _drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def _run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, **kwargs)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip() or done.returncode}")
    return done


class Bench:
    def __init__(self, base: Path) -> None:
        self.lab = Lab.at(str(base / "lab"))
        self.scratch = base / "scratch"

    # -- the lab ----------------------------------------------------------------------------

    def up(self) -> None:
        self.lab.up(timeout=10.0)
        self.scratch.mkdir(exist_ok=True)

    def down(self) -> None:
        if (self.lab.directory / "lab.json").exists():
            self.lab.down()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def copy(self, node: str) -> Path:
        return self.lab.node_dir(node) / "data"

    def on(self, node: str, *argv: str, timeout: float = 3600) -> str:
        return _run(self.lab.exec_command(node, list(argv)), timeout=timeout).stdout

    def status(self, node: str) -> Any:
        command = [sys.executable, "-m", "tandem.engine.cli", "state", "--json"]
        report = json.loads(self.on(node, *command))
        (stream,) = report["modules"]["demo"]["streams"]
        return stream

    def in_sync_count(self) -> int:
        return self.lab.log_path("a").read_text(errors="replace").count("(in sync)")

    def wait_in_sync(self, count: int, timeout: float = 3600) -> None:
        deadline = time.monotonic() + timeout
        while self.in_sync_count() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no resync #{count} within {timeout:g} s")
            time.sleep(0.05)

    def tx_bytes(self) -> int:
        """Bytes node a has sent on its network interface (the wire, framing included)."""
        netns = self.lab.netns("a")
        command = ["ip", "netns", "exec", netns, "cat", "/sys/class/net/eth0/statistics/tx_bytes"]
        return int(_run(command).stdout)

    def last_resync(self) -> dict[str, Any]:
        log = self.lab.log_path("a").read_text(errors="replace")
        how = re.findall(r"resync with \S+ started: (.*)", log)[-1]
        connected = _stamp(re.findall(r"^(\S+ \S+) \S+ INFO connected to ", log, re.M)[-1])
        in_sync = _stamp(
            re.findall(r"^(\S+ \S+) \S+ INFO replicating .* \(in sync\)", log, re.M)[-1]
        )
        elapsed, paths, compared, sent = re.findall(
            r"done in ([\d.]+) s: (\d+) paths, (\d+) bytes compared, (\d+) bytes sent", log
        )[-1]
        return {
            "how": how,
            "connected_to_in_sync_s": round(in_sync - connected, 3),
            "resync_s": float(elapsed),
            "paths": int(paths),
            "bytes_compared": int(compared),
            "bytes_sent": int(sent),
        }

    def reintegrate(self, count: int) -> dict[str, Any]:
        """Boot node b, wait for resync number ``count``: time and wire bytes."""
        _drop_caches()
        before = self.tx_bytes()
        started = time.monotonic()
        self.lab.start("b")
        self.wait_in_sync(count)
        boot_to_sync = time.monotonic() - started
        return {
            "boot_to_in_sync_s": round(boot_to_sync, 2),
            "wire_bytes": self.tx_bytes() - before,
            **self.last_resync(),
        }

    def boot_both(self) -> int:
        """Start both nodes (the secondary first); returns the resync count once in sync."""
        count = self.in_sync_count() + 1
        self.lab.start("b")
        self.lab.start("a")
        self.wait_in_sync(count)
        return count

    def settle(self) -> None:
        """Acknowledged journal records retire with the next checkpoint (every second)."""
        time.sleep(2.5)

    def restart_from_scratch_data(self, fill: Any) -> None:
        """Both nodes down, ``fill(directory)`` run on each copy, journals gone: the next
        connection compares everything (a first synchronization)."""
        self.lab.kill("a")
        self.lab.kill("b")
        for node in ("a", "b"):
            fill(self.copy(node))
            shutil.rmtree(self.lab.state_dir(node), ignore_errors=True)


def _stamp(text: str) -> float:
    """A log line's time (``2026-11-22 04:37:50,982``) in seconds."""
    day, clock = text.split(" ")
    hours, minutes, seconds = clock.replace(",", ".").split(":")
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds) + int(day[-2:]) * 86400


def _write_random_file(path: Path, size: int, seed: int) -> None:
    rng = random.Random(seed)
    pattern = rng.randbytes(64 * MIB)
    with open(path, "wb") as out:
        written = 0
        counter = 0
        while written < size:
            # a distinct 8-byte stamp in every block: no two blocks alike
            piece = bytearray(pattern[: min(64 * MIB, size - written)])
            for offset in range(0, len(piece), BLOCK):
                piece[offset : offset + 8] = counter.to_bytes(8, "little")
                counter += 1
            out.write(piece)
            written += len(piece)


def _change_blocks_script(path: Path, size: int, fraction: float, seed: int) -> tuple[str, int]:
    rng = random.Random(seed)
    blocks = sorted(rng.sample(range(size // BLOCK), int(size // BLOCK * fraction)))
    script = (
        "import os, random\n"
        f"rng = random.Random({seed})\n"
        f"fd = os.open({str(path)!r}, os.O_WRONLY)\n"
        f"for block in {blocks!r}:\n"
        f"    os.pwrite(fd, rng.randbytes({BLOCK}), block * {BLOCK})\n"
        "os.fsync(fd)\n"
        "os.close(fd)\n"
    )
    return script, len(blocks) * BLOCK


def one_big_file(bench: Bench, size: int) -> dict[str, Any]:
    lab = bench.lab
    target = lab.shared_path / "big"
    bench.restart_from_scratch_data(lambda d: None)
    _write_random_file(bench.copy("a") / "big", size, seed=1)
    shutil.copyfile(bench.copy("a") / "big", bench.copy("b") / "big")
    synced = bench.boot_both()
    bench.settle()
    lab.kill("b")
    old_copy = bench.scratch / "rsync-target"
    old_copy.mkdir(exist_ok=True)
    shutil.copyfile(bench.copy("b") / "big", old_copy / "big")  # b's copy as it left
    script, changed = _change_blocks_script(target, size, 0.01, seed=2)
    bench.on("a", sys.executable, "-c", script)
    tracked = bench.reintegrate(synced + 1)

    # the same return, compared by hashes: b's copy back as it left, everything compared
    bench.settle()
    lab.kill("b")
    shutil.copyfile(old_copy / "big", bench.copy("b") / "big")
    command = [sys.executable, "-m", "tandem.engine.cli", "resync", "demo", "--full"]
    bench.on("a", *command)
    hashed = bench.reintegrate(synced + 2)

    rsync = _rsync(bench, old_copy)
    return {
        "file_bytes": size,
        "changed_bytes": changed,
        "tandem_tracked": tracked,
        "tandem_hash_compare": hashed,
        "rsync": rsync,
    }


def _rsync(bench: Bench, old_copy: Path) -> dict[str, Any]:
    """rsync's daemon on node b serving a copy of b's old file; its client on node a."""
    config = bench.scratch / "rsyncd.conf"
    config.write_text(
        f"port = {RSYNC_PORT}\nuse chroot = no\n[data]\npath = {old_copy}\n"
        "read only = no\nuid = root\ngid = root\n"
    )
    netns_b = bench.lab.netns("b")
    daemon = subprocess.Popen(
        ["ip", "netns", "exec", netns_b, "rsync", "--daemon", "--no-detach", f"--config={config}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        _drop_caches()
        before = bench.tx_bytes()
        started = time.monotonic()
        done = _run(
            [
                "ip",
                "netns",
                "exec",
                bench.lab.netns("a"),
                "rsync",
                "--inplace",
                "--no-whole-file",
                "--ignore-times",  # the copies' times may agree to the second: compare anyway
                "--stats",
                str(bench.copy("a") / "big"),
                f"rsync://198.18.0.2:{RSYNC_PORT}/data/big",
            ]
        )
        elapsed = time.monotonic() - started
        wire = bench.tx_bytes() - before
    finally:
        daemon.terminate()
        daemon.wait()
    sent = re.search(r"Total bytes sent: ([\d,]+)", done.stdout)
    compared = subprocess.run(["cmp", "-s", str(bench.copy("a") / "big"), str(old_copy / "big")])
    same = compared.returncode == 0
    return {
        "seconds": round(elapsed, 2),
        "rsync_bytes_sent": int(sent.group(1).replace(",", "")) if sent else None,
        "wire_bytes": wire,
        "identical_after": same,
    }


def identical_data(bench: Bench, size: int) -> dict[str, Any]:
    files = max(1, size // GIB)

    def fill(directory: Path) -> None:
        for leftover in directory.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        for index in range(files):
            name = directory / f"data{index}"
            if directory == bench.copy("a"):
                _write_random_file(name, size // files, seed=10 + index)
            else:
                _run(["cp", "-a", str(bench.copy("a") / name.name), str(name)])

    bench.restart_from_scratch_data(fill)
    bench.boot_both()
    first_sync = bench.last_resync()
    _drop_caches()
    started = time.monotonic()
    for index in range(files):
        subprocess.run(["cat", str(bench.copy("a") / f"data{index}")], stdout=subprocess.DEVNULL)
    cat_one = size / (time.monotonic() - started)
    _drop_caches()
    started = time.monotonic()
    readers = [
        subprocess.Popen(["cat", str(bench.copy(node) / f"data{index}")], stdout=subprocess.DEVNULL)
        for node in ("a", "b")
        for index in range(files)
    ]
    for reader in readers:
        reader.wait()
    cat_both = 2 * size / (time.monotonic() - started)
    _drop_caches()
    command = [sys.executable, "-m", "tandem.engine.cli", "verify", "demo", "--json"]
    report = json.loads(bench.on("a", *command))
    (stream,) = report["streams"].values()
    verify_rate = stream["bytes_compared"] / stream["elapsed_s"]
    return {
        "bytes": size,
        "identical": report["identical"],
        "verify_seconds": stream["elapsed_s"],
        "verify_gib_s": round(verify_rate / GIB, 3),
        "cat_one_copy_gib_s": round(cat_one / GIB, 3),
        # both copies live on this one disk: reading both at once is what verify must do here
        "cat_both_copies_gib_s": round(cat_both / GIB, 3),
        "verify_disk_read_gib_s": round(2 * verify_rate / GIB, 3),
        "first_sync_by_hashes": first_sync,
        "first_sync_gib_s": round(size / first_sync["resync_s"] / GIB, 3),
    }


def many_files(bench: Bench, count: int) -> dict[str, Any]:
    lab = bench.lab
    per_directory = 1000

    def fill(directory: Path) -> None:
        for leftover in directory.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover)
            else:
                leftover.unlink()
        if directory != bench.copy("a"):
            # the same tree, times included
            _run(["cp", "-a", f"{bench.copy('a')}/.", f"{directory}/"])
            return
        rng = random.Random(20)
        for index in range(count):
            sub = directory / f"d{index // per_directory:04d}"
            if index % per_directory == 0:
                sub.mkdir()
            (sub / f"f{index % per_directory:04d}").write_bytes(
                rng.randbytes(rng.randrange(1, 4096))
            )

    started = time.monotonic()
    bench.restart_from_scratch_data(fill)
    created = time.monotonic() - started
    synced = bench.boot_both()
    first_sync = bench.last_resync()
    bench.settle()
    lab.kill("b")
    rng = random.Random(21)
    changed = rng.sample(range(count), count // 1000)
    names = [
        str(lab.shared_path / f"d{i // per_directory:04d}" / f"f{i % per_directory:04d}")
        for i in changed
    ]
    script = (
        "import os\n"
        f"for name in {names!r}:\n"
        "    with open(name, 'r+b') as f:\n"
        "        f.write(os.urandom(64))\n"
    )
    bench.on("a", sys.executable, "-c", script)
    tracked = bench.reintegrate(synced + 1)
    return {
        "files": count,
        "changed_files": len(changed),
        "setup_s": round(created, 1),
        "first_sync_by_hashes": first_sync,
        "reintegration": tracked,
    }


def _targets(results: dict[str, Any]) -> dict[str, Any]:
    targets: dict[str, Any] = {}
    big = results.get("big_file")
    if big:
        tracked, rsync = big["tandem_tracked"], big["rsync"]
        speedup = rsync["seconds"] / tracked["connected_to_in_sync_s"]
        wire_ratio = tracked["wire_bytes"] / big["changed_bytes"]
        targets["tracked_vs_rsync_speedup"] = {
            "value": round(speedup, 1),
            "target": ">= 10 (rsync's time / the resync's, from connection to in sync)",
            "met": speedup >= 10,
        }
        targets["tracked_wire_vs_changed"] = {
            "value": round(wire_ratio, 3),
            "target": "<= 1.2",
            "met": wire_ratio <= 1.2,
        }
    verify = results.get("identical_data")
    if verify:
        ratio = verify["verify_disk_read_gib_s"] / verify["cat_both_copies_gib_s"]
        targets["verify_read_rate_vs_cat_of_both_copies"] = {
            "value": round(ratio, 2),
            "target": ">= 0.8 (both copies share this machine's disk)",
            "met": ratio >= 0.8,
        }
    files = results.get("many_files")
    if files:
        seconds = files["reintegration"]["boot_to_in_sync_s"]
        targets["files_reintegration_boot_to_in_sync_s"] = {
            "value": seconds,
            "target": "<= 60",
            "met": seconds <= 60,
        }
    return targets


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument(
        "--only",
        choices=["big_file", "identical_data", "many_files"],
        action="append",
        help="run only this part (repeatable)",
    )
    args = parser.parse_args()
    for tool in ("rsync", "cmp"):
        if shutil.which(tool) is None:
            print(
                f"resync bench: {tool} is not installed (bash .ci/setup installs it)",
                file=sys.stderr,
            )
            return 1
    base = Path(args.dir) / f"tandem-bench-resync-{os.getpid()}"
    base.mkdir(parents=True)
    bench = Bench(base)
    sizes = (256 * MIB, GIB, 100_000) if args.quick else (2 * GIB, 10 * GIB, 1_000_000)
    results: dict[str, Any] = {}
    try:
        bench.up()
        parts: dict[str, Callable[[Bench, int], dict[str, Any]]] = {
            "big_file": one_big_file,
            "identical_data": identical_data,
            "many_files": many_files,
        }
        for (name, part), size in zip(parts.items(), sizes, strict=True):
            if not args.only or name in args.only:
                results[name] = part(bench, size)
    finally:
        bench.down()
        shutil.rmtree(base, ignore_errors=True)
    report = {
        "benchmark": "resync",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "quick": args.quick,
        "results": results,
        "targets": _targets(results),
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
