"""A nemesis for a lab: a random fault schedule under a client writing through the VIP, with
the cluster's promises checked while it runs and at the end.

Faults: kill -9 of either node, of the serving node's mount process alone, SIGSTOP of that
process, partitions with the witness on one side or none, a cable cut, a heartbeat flood from
the client, TCP resets of everything between the nodes, 10 % packet loss between them, 30 ms
of delay each way (a user-space relay), a full disk under either node's copy (a lab made with
`--disk`). After
each, the lab is healed and must settle (one serving, one up-to-date secondary) before the
next. Invariants:
- never two nodes serving, never two holding the VIP (sampled ten times a second);
- every write the client got an OK for is in the serving node's copy at the end;
- the copies converge: `tandem verify` finds them identical, or a copy kept aside says why.

    tandem lab nemesis --seed 7 --faults 20 [--out results.json]

The schedule is pure (`schedule`), so a failing seed replays exactly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tandem.engine.lab.lab import APP_PORT, NODES, VIP, Lab, LabError

APP = [sys.executable, "-m", "tandem.engine.lab.demoapp"]
KINDS = (
    "kill",
    "kill_mount",
    "stop_mount",
    "partition",
    "cut",
    "flood",
    "reset",
    "loss",
    "delay",
    "full",
)
HOLD = 4.0  # seconds a partition, a cut or a flood lasts
SETTLE = 90.0


@dataclass(frozen=True)
class Fault:
    kind: str
    node: str = ""  # kill, cut, full: which node ("" for the ones aimed at the serving node)
    witness: str = ""  # partition: which side keeps the witness (a, b or none)


def schedule(seed: int, count: int) -> list[Fault]:
    """``count`` faults drawn from ``seed``: the same seed, the same schedule."""
    draw = random.Random(seed)
    faults = []
    for _ in range(count):
        kind = draw.choice(KINDS)
        if kind in ("kill", "cut", "full"):
            faults.append(Fault(kind, node=draw.choice(sorted(NODES))))
        elif kind == "partition":
            faults.append(Fault(kind, witness=draw.choice(("a", "b", "none"))))
        else:
            faults.append(Fault(kind))
    return faults


@dataclass
class Report:
    seed: int
    faults: list[dict[str, str]] = field(default_factory=list)
    samples: int = 0
    violations: list[str] = field(default_factory=list)
    writes_acknowledged: int = 0
    acknowledged_writes_lost: int = 0
    lost_runs: list[dict[str, object]] = field(default_factory=list)  # when the lost were OK'd
    failovers: int = 0
    verify: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations and self.acknowledged_writes_lost == 0 and self.verify != ""


class _Sampler:
    """Who serves and who holds the VIP, ten times a second, in a thread."""

    def __init__(self, lab: Lab, report: Report) -> None:
        self.lab = lab
        self.report = report
        self.last_serving: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _holds_vip(self, node: str) -> bool:
        listed = subprocess.run(
            ["ip", "-n", self.lab.netns(node), "-br", "addr", "show"],
            capture_output=True,
            text=True,
        )
        return f"{VIP}/" in listed.stdout

    def _run(self) -> None:
        while not self._stop.is_set():
            serving = self.lab.serving_nodes()
            vip = [n for n in NODES if self._holds_vip(n)]
            self.report.samples += 1
            if len(serving) > 1:
                self.report.violations.append(f"{time.strftime('%T')} both serve")
            if len(vip) > 1:
                self.report.violations.append(f"{time.strftime('%T')} both hold the VIP")
            if len(serving) == 1 and serving[0] != self.last_serving:
                if self.last_serving is not None:
                    self.report.failovers += 1
                self.last_serving = serving[0]
            time.sleep(0.1)

    def __enter__(self) -> _Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


class Nemesis:
    def __init__(self, lab: Lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir

    def run(self, seed: int, count: int) -> Report:
        report = Report(seed)
        started = time.monotonic()
        planned = schedule(seed, count)
        if any(f.kind == "full" for f in planned) and not self.lab.has_disks:
            raise LabError(
                "this schedule fills disks: start the lab with its own disk per node "
                "(tandem lab up --disk 256)"
            )
        acked = self.workdir / f"nemesis-{seed}.acked"
        acked.unlink(missing_ok=True)
        self.lab.settle()
        writing = [*APP, "client", VIP, str(APP_PORT), "--log", str(acked), "--stamp"]
        client = subprocess.Popen(
            self.lab.exec_command("client", [*writing, "--seconds", "100000"]),
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            with _Sampler(self.lab, report):
                for fault in planned:
                    shown = {k: v for k, v in asdict(fault).items() if v}
                    report.faults.append({**shown, "at": time.strftime("%T")})
                    self._inflict(fault)
                    self._recover()
                time.sleep(1)
        finally:
            os.killpg(client.pid, signal.SIGKILL)
            client.wait()
        self.lab.settle()
        self._check_writes(acked, report)
        report.verify = self._verify()
        report.seconds = round(time.monotonic() - started, 1)
        return report

    # -- faults -----------------------------------------------------------------------------

    def _serving(self) -> str:
        serving = self.lab.serving_nodes()
        if len(serving) != 1:
            raise LabError(f"expected one serving node before a fault, found {serving}")
        return serving[0]

    def _mount_child(self, node: str) -> int:
        listed = subprocess.run(
            self.lab.exec_command(node, ["ps", "-eo", "pid=,args="]),
            capture_output=True,
            text=True,
        )
        # a serving node runs one mount process (one it kept ready is started with
        # --wait-for-go and then told to go: the same process)
        found = [
            int(line.split()[0])
            for line in listed.stdout.splitlines()
            if "tandem.engine.cli mount" in line
        ]
        if len(found) != 1:
            raise LabError(f"expected one mount process on {node}, found {found}")
        return found[0]

    def _signal_mount(self, signum: int) -> None:
        node = self._serving()
        pid = self._mount_child(node)
        subprocess.run(self.lab.exec_command(node, ["kill", f"-{signum}", str(pid)]), check=True)
        # the node stops serving (a hung mount is killed first); the peer takes over unless it
        # answered a request to go on alone since its last resync (then nobody may serve
        # until this node is back: its copy holds writes the peer lacks)
        self._wait(lambda: node not in self.lab.serving_nodes(), "the node to stop serving")
        self._wait(lambda: not self._node_runs(node), "the node process to end")
        self._reboot(node)  # as systemd restarts a node whose mount failed

    def _inflict(self, fault: Fault) -> None:
        if fault.kind == "kill":
            self.lab.kill(fault.node)
            time.sleep(2)
            self.lab.start(fault.node)
        elif fault.kind == "kill_mount":
            self._signal_mount(signal.SIGKILL)
        elif fault.kind == "stop_mount":
            self._signal_mount(signal.SIGSTOP)
        elif fault.kind == "partition":
            self.lab.partition(fault.witness)
            time.sleep(HOLD)
            self.lab.heal_partition()
        elif fault.kind == "cut":
            self.lab.cut(fault.node)
            time.sleep(HOLD)
            self.lab.cut(fault.node, connected=True)
        elif fault.kind == "flood":
            self._flood()
        elif fault.kind in ("reset", "loss"):
            self.lab.impair(fault.kind)
            time.sleep(HOLD)
            self.lab.mend()
        elif fault.kind == "delay":
            self.lab.impair("delay")
            time.sleep(2 * HOLD)  # the connections start again through the relay first
            self.lab.mend()
        elif fault.kind == "full":
            self.lab.fill(fault.node)
            time.sleep(HOLD)
            self.lab.unfill(fault.node)

    def _node_runs(self, node: str) -> bool:
        """The node process still runs (it ends when its mount failed)."""
        return self.lab.module_state(node) is not None

    def _reboot(self, node: str) -> None:
        """A node whose mount failed has stopped its node process: boot it again."""
        self.lab.kill(node)
        self.lab.start(node)

    def _flood(self) -> None:
        flood = (
            "import socket, time\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"end = time.monotonic() + {HOLD}\n"
            "while time.monotonic() < end:\n"
            "    for node in ('198.18.0.1', '198.18.0.2'):\n"
            "        s.sendto(b'x' * 200, (node, 7400))\n"
        )
        subprocess.run(self.lab.exec_command("client", [sys.executable, "-c", flood]), check=True)

    def _recover(self) -> None:
        for node in NODES:
            if self.lab.init_pid(node) is None:
                self.lab.start(node)
        self.lab.settle(SETTLE)

    def _wait(self, condition: Any, what: str, timeout: float = SETTLE) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise LabError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.1)

    # -- the end ------------------------------------------------------------------------------

    def _check_writes(self, acked: Path, report: Report) -> None:
        logged = acked.read_text().splitlines() if acked.exists() else []
        written = [line.split() for line in logged if line]
        serving = self._serving()
        store = (self.lab.node_dir(serving) / "data" / "store.log").read_text().splitlines()
        kept = {line.split(" ", 1)[0] for line in store if line}
        report.writes_acknowledged = len(written)
        lost = [(key, float(at)) for key, at in written if key not in kept]
        report.acknowledged_writes_lost = len(lost)
        report.lost_runs = lost_runs(lost, [key for key, _ in written])

    def _verify(self) -> str:
        serving = self._serving()
        command = [sys.executable, "-m", "tandem.engine.cli", "verify", "demo"]
        done = subprocess.run(
            self.lab.exec_command(serving, command), capture_output=True, text=True
        )
        if done.returncode == 0:
            return "identical"
        aside = [self.lab.state_dir(node) / "modules" / "demo" / "aside" for node in NODES]
        if any(path.exists() and any(path.iterdir()) for path in aside):
            return "kept aside"
        return ""


def lost_runs(lost: list[tuple[str, float]], order: list[str]) -> list[dict[str, object]]:
    """The lost writes as runs of consecutive acknowledgements, each with the time of its
    first and last OK (to be read beside the nodes' logs)."""
    position = {key: index for index, key in enumerate(order)}
    runs: list[list[tuple[str, float]]] = []
    for key, at in sorted(lost, key=lambda item: position[item[0]]):
        if runs and position[runs[-1][-1][0]] == position[key] - 1:
            runs[-1].append((key, at))
        else:
            runs.append([(key, at)])
    return [
        {
            "first": run[0][0],
            "last": run[-1][0],
            "count": len(run),
            "from": _clock(run[0][1]),
            "to": _clock(run[-1][1]),
        }
        for run in runs
    ]


def _clock(at: float) -> str:
    return time.strftime("%T", time.localtime(at)) + f".{int(at * 1000) % 1000:03d}"


def _other(node: str) -> str:
    return next(n for n in NODES if n != node)


def run_nemesis(directory: str | None, seed: int, count: int, out: str | None) -> int:
    lab = Lab.at(directory)
    report = Nemesis(lab, lab.directory).run(seed, count)
    shown = {**asdict(report), "ok": report.ok}
    text = json.dumps(shown, indent=2)
    if out:
        Path(out).write_text(text + "\n")
    print(text)
    return 0 if report.ok else 1
