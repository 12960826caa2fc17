"""How long a client is without its service when the serving node dies, on a `tandem lab` pair.

Each trial: the module settled (one node PRIM, the other an up-to-date SECOND), a prober in the
client namespace asking the demo application at the virtual IP "who are you?" every few
milliseconds; SIGKILL of the serving node's whole PID namespace (a power cut); the figure is the
time from the kill to the first answer from the other node (machine-wide monotonic clock, the
same in every namespace). The killed node boots again and resyncs before the next trial, which
kills the other node.

Run at the default settings (heartbeat every 0.2 s, peer lost after 1.0 s of silence) and at the
most aggressive documented ones (0.05 s / 0.25 s). Then the false-failover run: the serving node
under full write load (a writer rewriting a file in the replicated directory as fast as it can,
plus the demo client) for --load-minutes, counting every state change in either module log.

    python -m tandem.bench.failover [--out FILE] [--quick] [--dir DIR] [--trials N]
        [--load-minutes M]

`--quick`: 3 trials per setting, a 1-minute load run.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tandem.bench.fs_overhead import bench_parser, emit, machine
from tandem.engine.lab.lab import APP_PORT, NODES, VIP, Lab

SETTINGS = {"default": (0.2, 1.0), "aggressive": (0.05, 0.25)}
APP = [sys.executable, "-m", "tandem.engine.lab.demoapp"]


def _kill_group(pid: int, signum: int) -> None:
    """The process group a ``start_new_session`` child leads (never a shell's `kill -PID`:
    procps reads a negative number as a signal)."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


def _serving(lab: Lab) -> str:
    (node,) = lab.serving_nodes()
    return node


def _trial(lab: Lab, scratch: Path, number: int) -> dict[str, Any]:
    lab.settle()
    victim = _serving(lab)
    survivor = next(n for n in NODES if n != victim)
    out = scratch / f"probe-{number}.log"
    command = lab.exec_command("client", [*APP, "probe", VIP, str(APP_PORT)])
    prober = subprocess.Popen(
        [*command, "--out", str(out), "--seconds", "30"], start_new_session=True
    )
    try:
        deadline = time.monotonic() + 10
        while not (out.exists() and f" {victim}" in out.read_text()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the prober never reached {victim} at {VIP}")
            time.sleep(0.05)
        time.sleep(0.5)
        pid = lab.init_pid(victim)
        assert pid is not None
        killed_at = time.monotonic()
        lab.kill(victim)
        deadline = time.monotonic() + 20
        answered_at = None
        while answered_at is None and time.monotonic() < deadline:
            for line in out.read_text().splitlines():
                if len(line.split()) != 2:
                    continue  # the prober is writing this line right now
                stamp, node = line.split()
                if node == survivor and float(stamp) > killed_at:
                    answered_at = float(stamp)
                    break
            time.sleep(0.05)
    finally:
        if prober.poll() is None:
            _kill_group(prober.pid, signal.SIGTERM)
        prober.wait()
    if answered_at is None:
        raise RuntimeError(f"{survivor} never answered at {VIP} after {victim} was killed")
    lab.start(victim)
    return {"killed": victim, "seconds": round(answered_at - killed_at, 3)}


def _failovers(base: Path, heartbeat: tuple[float, float], trials: int) -> dict[str, Any]:
    lab = Lab.at(str(base / "lab"))
    scratch = base / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    lab.up(heartbeat=heartbeat)
    try:
        results = [_trial(lab, scratch, n) for n in range(trials)]
    finally:
        lab.down()
    seconds = [r["seconds"] for r in results]
    return {
        "heartbeat_interval_s": heartbeat[0],
        "heartbeat_timeout_s": heartbeat[1],
        "trials": results,
        "median_s": round(statistics.median(seconds), 3),
        "max_s": max(seconds),
    }


def _state_changes(lab: Lab) -> list[str]:
    changes = []
    for node in NODES:
        log = lab.state_dir(node) / "modules" / "demo" / "module.log"
        changes += [f"{node}: {line}" for line in log.read_text().splitlines() if " -> " in line]
    return changes


def _no_false_failover(base: Path, minutes: float) -> dict[str, Any]:
    lab = Lab.at(str(base / "lab"))
    lab.up()
    try:
        lab.settle()
        serving = _serving(lab)
        before = _state_changes(lab)
        writer = subprocess.Popen(
            lab.exec_command(
                serving,
                [
                    "sh",
                    "-c",
                    f"while :; do dd if=/dev/urandom of={lab.shared_path}/load bs=1M count=256 "
                    "conv=notrunc status=none; done",
                ],
            ),
            start_new_session=True,
        )
        acked = base / "acked.log"
        seconds = str(minutes * 60)
        client = subprocess.run(
            lab.exec_command(
                "client",
                [*APP, "client", VIP, str(APP_PORT), "--log", str(acked), "--seconds", seconds],
            ),
            capture_output=True,
            text=True,
        )
        _kill_group(writer.pid, signal.SIGKILL)
        writer.wait()
        after = _state_changes(lab)
        written = int(
            subprocess.run(
                ["stat", "-c", "%s", str(lab.node_dir(serving) / "data" / "load")],
                capture_output=True,
                text=True,
            ).stdout.strip()
            or 0
        )
    finally:
        lab.down()
    changes = after[len(before) :]
    return {
        "minutes": minutes,
        "false_failovers": sum("ALONE" in c or "WAIT" in c for c in changes),
        "state_changes": changes,
        "client": client.stdout.strip(),
        "load_file_bytes": written,
    }


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--trials", type=int, help="failovers per setting (default 7; quick 3)")
    parser.add_argument("--load-minutes", type=float, help="the load run (default 10; quick 1)")
    args = parser.parse_args()
    trials = args.trials or (3 if args.quick else 7)
    minutes = args.load_minutes or (1.0 if args.quick else 10.0)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    report: dict[str, Any] = {
        "benchmark": "failover",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
    }
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="tandem-bench-") as base:
        for name, heartbeat in SETTINGS.items():
            report[name] = _failovers(Path(base) / name, heartbeat, trials)
        report["under_load"] = _no_false_failover(Path(base) / "load", minutes)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
