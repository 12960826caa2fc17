"""Failover in a real lab: two nodes in their own namespaces, the virtual IP on a bridge, the demo
key-value application started by start_prim, a client writing through the VIP, the switch as
witness. A monitor asks both nodes ten times a second, for the whole test, and records any moment
where both serve or both hold the VIP."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tandem.engine.lab.lab import APP_PORT, VIP, Lab
from tandem.heartbeat.packet import Heartbeat, encode
from tests.helpers.lab import CLI, LabCluster, stop_group
from tests.helpers.mountproc import wait_for

pytestmark = pytest.mark.root

SERVING = ("PRIM", "ALONE")
SPOOF = str(Path(__file__).parents[1] / "helpers" / "spoof.py")
APP = [sys.executable, "-m", "tandem.engine.lab.demoapp"]


class Monitor:
    """Polls both nodes' module state and VIP until stopped; keeps every violation seen."""

    def __init__(self, lab: LabCluster) -> None:
        self.lab = lab
        self.violations: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def state(self, node: str) -> dict[str, Any] | None:
        return Lab.at(str(self.lab.directory)).module_state(node)

    def holds_vip(self, node: str) -> bool:
        done = subprocess.run(
            ["ip", "-n", Lab.at(str(self.lab.directory)).netns(node), "-br", "addr", "show"],
            capture_output=True,
            text=True,
        )
        return f"{VIP}/" in done.stdout

    def _run(self) -> None:
        while not self._stop.is_set():
            states = {n: self.state(n) for n in ("a", "b")}
            serving = [n for n, s in states.items() if s is not None and s["state"] in SERVING]
            vip = [n for n in ("a", "b") if self.holds_vip(n)]
            self.samples += 1
            if len(serving) > 1:
                self.violations.append(f"both serve: {states}")
            if len(vip) > 1:
                self.violations.append("both hold the VIP")
            time.sleep(0.1)

    def __enter__(self) -> Monitor:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture
def lab(failover_lab: LabCluster) -> LabCluster:
    return failover_lab


def _state(lab: LabCluster, node: str) -> dict[str, Any] | None:
    return Monitor(lab).state(node)


def _is(lab: LabCluster, node: str, *states: str) -> bool:
    found = _state(lab, node)
    return found is not None and found["state"] in states


def _client(lab: LabCluster, log: Path, seconds: float) -> subprocess.Popen[str]:
    return lab.popen(
        "client",
        *[*APP, "client", VIP, str(APP_PORT)],
        *["--log", str(log), "--seconds", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )


def _stored(lab: LabCluster, node: str) -> set[str]:
    text = (lab.copy(node) / "store.log").read_text()
    return {line.split(" ", 1)[0] for line in text.splitlines() if line}


def _get(lab: LabCluster, key: str) -> str:
    done = lab.exec("client", *APP, "get", VIP, str(APP_PORT), key)
    return done.stdout.strip()


def _settled(lab: LabCluster, serving: str) -> bool:
    other = "b" if serving == "a" else "a"
    s, o = _state(lab, serving), _state(lab, other)
    return (
        s is not None
        and o is not None
        and s["state"] == "PRIM"
        and o["state"] == "SECOND"
        and o["up_to_date"]
    )


def test_killing_the_primary_moves_the_vip_and_the_application_and_keeps_every_write(
    lab: LabCluster, workspace: Path
) -> None:
    acked = workspace / "acked.log"
    with Monitor(lab) as monitor:
        client = _client(lab, acked, 10)
        try:
            time.sleep(3)
            lab.kill("a")
            wait_for(lambda: _is(lab, "b", "ALONE"), 15, "b taking over")
            out, _ = client.communicate(timeout=60)
        finally:
            stop_group(client)
        seen = json.loads(out)
        assert seen["acknowledged"] > 50, seen
        # every write the client got an OK for is in b's copy, and served at the VIP by b
        written = acked.read_text().split()
        assert len(written) == seen["acknowledged"]
        assert set(written) <= _stored(lab, "b")
        assert _get(lab, written[-1]) == f"VALUE v{written[-1][1:]}"
        b = _state(lab, "b")
        assert b is not None and b["vip_held"] and monitor.holds_vip("b")
        # the state says since when, and what the lost peer said last, with its age
        assert b["reason"] == "the peer was lost; took over"
        assert 0 <= b["for_s"] < 60 and abs(time.time() - b["for_s"] - b["since"]) < 5
        assert b["peer"]["state"] is None and b["peer"]["last_state"] == "PRIM"
        assert b["peer"]["heard_s_ago"] >= 1
        assert (
            "start_prim: exit code 0"
            in (lab.directory / "nodes/b/state/modules/demo/module.log").read_text()
        )
        # a returns: it follows b, resyncs, and the service never moved back by itself
        lab.start("a")
        wait_for(lambda: _settled(lab, "b"), 30, "a back as an up-to-date secondary")
        assert _get(lab, written[0]) == f"VALUE v{written[0][1:]}"
    assert monitor.samples > 50
    assert not monitor.violations, monitor.violations[:3]


@pytest.mark.parametrize(("witness", "serves"), [("a", "a"), ("b", "b"), ("none", None)])
def test_a_partition_leaves_at_most_the_side_that_reaches_the_witness_serving(
    lab: LabCluster, witness: str, serves: str | None
) -> None:
    with Monitor(lab) as monitor:
        lab.cli("partition", "--witness", witness)
        time.sleep(6)  # the heartbeat timeout several times over
        for node in ("a", "b"):
            expected = node == serves
            assert _is(lab, node, *SERVING) == expected, (node, _state(lab, node))
            assert monitor.holds_vip(node) == expected
        lab.cli("heal")
        wait_for(
            lambda: _settled(lab, "a") or _settled(lab, "b"),
            40,
            "one node serving and the other in sync after the heal",
        )
    assert not monitor.violations, monitor.violations[:3]


def test_swap_moves_the_service_with_its_data(lab: LabCluster, workspace: Path) -> None:
    acked = workspace / "acked.log"
    done = lab.exec(
        "client",
        *APP,
        "client",
        VIP,
        str(APP_PORT),
        "--log",
        str(acked),
        "--seconds",
        "2",
    )
    assert done.returncode == 0, done.stderr
    with Monitor(lab) as monitor:
        swapped = lab.exec("a", *CLI, "swap", "demo")
        assert swapped.returncode == 0, swapped.stderr
        assert "SECOND" in swapped.stdout
        wait_for(lambda: _settled(lab, "b"), 30, "b serving, a in sync")
    written = acked.read_text().split()
    assert set(written) <= _stored(lab, "b")
    assert _get(lab, written[-1]) == f"VALUE v{written[-1][1:]}"
    assert not monitor.violations, monitor.violations[:3]


def test_the_process_checker_restarts_the_application_then_fails_over(lab: LabCluster) -> None:
    pidfile = lab.directory / "nodes" / "a" / "demoapp.pid"

    def kill_app() -> int:
        pid = int(pidfile.read_text())
        assert lab.exec("a", "kill", str(pid)).returncode == 0
        return pid

    def restarted(gone: int) -> bool:
        return pidfile.exists() and pidfile.read_text().strip() not in ("", str(gone))

    killed = kill_app()
    wait_for(lambda: restarted(killed), 15, "a restarted app")
    assert _get(lab, "nothing") == "NONE"  # answering at the VIP again
    assert _is(lab, "a", "PRIM")
    for _ in range(2):  # maxloop = 3 restarts in the interval
        again = kill_app()
        wait_for(lambda again=again: restarted(again), 15, "a restarted app")  # type: ignore[misc]
    kill_app()  # the 4th failure: the module fails over
    wait_for(lambda: _settled(lab, "b"), 30, "the module failed over to b")
    log = (lab.directory / "nodes/a/state/modules/demo/module.log").read_text()
    assert "failed 4 times in 300 s; failed over to b" in log
    assert _get(lab, "nothing") == "NONE"


def test_operator_commands_and_their_refusals(lab: LabCluster) -> None:
    refused = lab.exec("b", *CLI, "prim", "demo")
    assert refused.returncode == 1 and "the peer serves: use `tandem swap`" in refused.stderr
    unknown = lab.exec("a", *CLI, "swap", "nosuch")
    assert unknown.returncode == 1 and "not run with failover on this node" in unknown.stderr
    stopped = lab.exec("b", *CLI, "stop", "demo")
    assert stopped.returncode == 0 and "STOP" in stopped.stdout
    wait_for(lambda: "b is STOP" in (_state(lab, "a") or {}).get("reason", ""), 10, "a told")
    started = lab.exec("b", *CLI, "start", "demo")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: _settled(lab, "a"), 30, "b back in sync")
    state = lab.exec("a", *CLI, "state", "--json")
    report = json.loads(state.stdout)["modules"]["demo"]
    assert report["failover"]["state"] == "PRIM" and report["failover"]["vip_held"]
    assert report["failover"]["peer"]["state"] == "SECOND"
    logs = lab.exec("a", *CLI, "logs", "demo")
    assert "WAIT -> PRIM" in logs.stdout
    app = lab.exec("a", *CLI, "logs", "demo", "--app")
    assert "start_prim: exit code 0" in app.stdout
    lab.kill("b")

    def peer_state() -> object:
        down = lab.exec("a", *CLI, "state", "--json")
        return json.loads(down.stdout)["modules"]["demo"]["failover"]["peer"]["state"]

    wait_for(lambda: peer_state() is None, 10, "b's loss seen in a's state")
    assert _is(lab, "a", "ALONE")
    # a command for a node that is down names the socket nobody answers on
    b_state = str(lab.directory / "nodes" / "b" / "state")
    down = subprocess.run(
        [*CLI, "swap", "demo", "--state-dir", b_state], capture_output=True, text=True
    )
    assert down.returncode == 1 and "nothing is running there" in down.stderr
    # a node process that crashed while its host lived left the VIP on its interface: the next
    # start drops it (a holds it now)
    netns = Lab.at(str(lab.directory)).netns("b")
    subprocess.run(["ip", "-n", netns, "addr", "add", f"{VIP}/24", "dev", "eth0"], check=True)
    lab.start("b")
    wait_for(lambda: _settled(lab, "a"), 30, "b back as secondary")
    monitor = Monitor(lab)
    assert not monitor.holds_vip("b") and monitor.holds_vip("a")


def _mount_child(lab: LabCluster, node: str) -> int:
    listed = lab.exec(node, "ps", "-eo", "pid=,args=")
    pids = [
        int(line.split()[0])
        for line in listed.stdout.splitlines()
        if "tandem.engine.cli mount" in line  # one: a serving node keeps none ready
    ]
    assert len(pids) == 1, listed.stdout
    return pids[0]


def _file_writer(lab: LabCluster, prefix: str, done_log: Path) -> subprocess.Popen[Any]:
    """A new file on a every 20 ms; each one whose write succeeded is logged on the host."""
    writer = lab.popen(
        "a",
        "sh",
        "-c",
        f"i=0; while [ $i -lt 100000 ]; do i=$((i+1)); echo $i > {lab.path}/{prefix}$i "
        f"2>/dev/null && echo $i >> {done_log}; sleep 0.02; done",
    )
    wait_for(lambda: done_log.exists() and len(done_log.read_text().split()) > 20, 30, "writes")
    return writer


def test_a_killed_mount_child_fails_closed_and_the_peer_takes_over(
    lab: LabCluster, workspace: Path
) -> None:
    """kill -9 of the primary's mount process alone: no write after it may succeed on a (its
    path answers with an error, the bare copy gets nothing), and b, which has every write a
    reported done, serves."""
    done_log = workspace / "done.log"
    writer = _file_writer(lab, "w", done_log)
    try:
        child = _mount_child(lab, "a")
        killed = lab.exec("a", "kill", "-9", str(child))
        assert killed.returncode == 0, killed.stderr
        wait_for(lambda: _is(lab, "b", "ALONE", "PRIM"), 30, "b taking over")
        time.sleep(1)
    finally:
        stop_group(writer)
    done = done_log.read_text().split()
    on_b = {name for name in os.listdir(lab.copy("b")) if name.startswith("w")}
    assert {f"w{i}" for i in done} <= on_b, sorted({f"w{i}" for i in done} - on_b)
    # nothing reached a's bare copy past the mirror: it holds no write b lacks
    on_a = {name for name in os.listdir(lab.copy("a")) if name.startswith("w")}
    assert on_a <= on_b, sorted(on_a - on_b)
    failed = lab.exec("a", "sh", "-c", f"echo x > {lab.path}/late")
    assert failed.returncode != 0 and "not connected" in failed.stderr, failed.stderr


def test_a_stream_reset_half_open_leaves_no_secondary_taking_over_without_the_writes(
    lab: LabCluster, workspace: Path
) -> None:
    """Every TCP segment between the nodes answered with a reset: a's end of the stream resets,
    b's stays open and silent (it never sees the stream end). a may go on alone only once b has
    said it is behind; so when a's mount then dies, b does not take over with a copy missing
    what a acknowledged (the nemesis, before: 9,423 acknowledged writes lost), and a, booted
    again, serves them."""
    done_log = workspace / "done.log"
    writer = _file_writer(lab, "r", done_log)
    try:
        lab.cli("impair", "reset")
        before = len(done_log.read_text().split())
        wait_for(
            lambda: len(done_log.read_text().split()) > before + 25, 30, "writes acknowledged alone"
        )
        found = _state(lab, "b")
        assert found is not None and found["up_to_date"] is False, found
        killed = lab.exec("a", "kill", "-9", str(_mount_child(lab, "a")))
        assert killed.returncode == 0, killed.stderr
        wait_for(lambda: not _is(lab, "a", "PRIM", "ALONE"), 30, "a to stop serving")
        time.sleep(3)  # longer than the heartbeat timeout: b has judged a lost by now
        assert not _is(lab, "b", "PRIM", "ALONE"), _state(lab, "b")
    finally:
        stop_group(writer)
        lab.cli("mend")
    lab.kill("a")
    lab.start("a")
    try:
        wait_for(lambda: _settled(lab, "a"), 90, "a serving its newer copy, b following")
    except AssertionError:
        print(lab.log("a"), lab.log("b"))  # shown with the failure
        raise AssertionError(f"not settled: a {_state(lab, 'a')}, b {_state(lab, 'b')}") from None
    done = {f"r{i}" for i in done_log.read_text().split()}
    on_a = {name for name in os.listdir(lab.copy("a")) if name.startswith("r")}
    assert done <= on_a, sorted(done - on_a)


def test_a_stream_broken_while_nothing_waits_leaves_the_secondary_able_to_take_over(
    lab: LabCluster,
) -> None:
    """Resets between the nodes while the application writes nothing: a's mount has nothing to
    acknowledge without b, so it asks nothing, and b stays up to date; a then dies and b takes
    over (before, any broken stream made b count itself behind, and nobody could serve)."""
    lab.cli("impair", "reset")  # reconnections fail; the idle stream itself carries nothing
    try:
        ended = lab.exec("a", "ss", "-K", "-t", "dst", "198.18.0.2", "dport", "=", ":7400")
        assert ended.returncode == 0, ended.stderr
        wait_for(lambda: "waits for the node's decision" in lab.log("a"), 20, "a's stream to break")
        time.sleep(1.0)
        found = _state(lab, "b")
        assert found is not None and found["up_to_date"] is True, found
        lab.kill("a")
        wait_for(lambda: _is(lab, "b", "ALONE"), 15, "b taking over")
    finally:
        lab.cli("mend")


def test_a_hung_mount_is_a_failed_mount(lab: LabCluster, workspace: Path) -> None:
    """SIGSTOP of the primary's mount process: writers hang on it, so the node must not go on
    telling its peer it serves. It stops answering its control socket; the node kills it (the
    mount stays, dead) and fails over; every write a saw succeed is on b."""
    done_log = workspace / "done.log"
    writer = _file_writer(lab, "h", done_log)
    try:
        child = _mount_child(lab, "a")
        stopped = lab.exec("a", "kill", "-STOP", str(child))
        assert stopped.returncode == 0, stopped.stderr
        started = time.monotonic()
        wait_for(lambda: _is(lab, "b", "ALONE", "PRIM"), 40, "b taking over")
        took = time.monotonic() - started
    finally:
        stop_group(writer)
    assert took < 25, f"a hung mount was noticed only after {took:.1f} s"
    assert "hung; killing it" in lab.log("a")
    done = {f"h{i}" for i in done_log.read_text().split()}
    on_b = {name for name in os.listdir(lab.copy("b")) if name.startswith("h")}
    assert done <= on_b, sorted(done - on_b)


def _cold_restart(lab: LabCluster, data: dict[str, dict[str, bytes]]) -> None:
    """Both nodes down, their state directories gone (a first start), each copy holding
    exactly ``data[node]``; then b boots first, a (the default primary) after it."""
    for node in ("a", "b"):
        lab.kill(node)
    for node in ("a", "b"):
        shutil.rmtree(lab.directory / "nodes" / node / "state" / "modules")
        copy = lab.copy(node)
        for entry in copy.iterdir():
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        for name, content in data[node].items():
            (copy / name).write_bytes(content)
    lab.start("b")
    time.sleep(1)
    lab.start("a")


def test_a_first_start_never_deletes_the_only_copy_with_data(lab: LabCluster) -> None:
    """Issue 13, point 4: the database only in b's copy, a (the default primary) empty and
    started last: b serves, and the database reaches a instead of being deleted."""
    database = os.urandom(300_000)
    _cold_restart(lab, {"a": {}, "b": {"important.db": database}})
    wait_for(lambda: _is(lab, "b", "PRIM") and _is(lab, "a", "SECOND"), 60, "b serving")
    wait_for(lambda: _state(lab, "a")["up_to_date"], 60, "a in sync")  # type: ignore[index]
    assert (lab.copy("b") / "important.db").read_bytes() == database
    assert (lab.copy("a") / "important.db").read_bytes() == database
    assert not (lab.directory / "nodes" / "a" / "state" / "modules" / "demo" / "aside").exists()


def test_a_first_start_with_data_on_both_waits_and_keeps_the_copy_not_chosen(
    lab: LabCluster,
) -> None:
    _cold_restart(lab, {"a": {"a.db": b"kept by a"}, "b": {"b.db": b"kept by b"}})
    wait_for(lambda: _is(lab, "a", "WAIT") and _is(lab, "b", "WAIT"), 60, "both waiting")
    time.sleep(2)  # and they keep waiting
    for node in ("a", "b"):
        state = _state(lab, node)
        assert state is not None and state["state"] == "WAIT", state
        assert "tandem prim --force" in state["reason"] and state["holds"]["files"] == 1
    assert (lab.copy("a") / "a.db").read_bytes() == b"kept by a"
    chosen = lab.exec("b", *CLI, "prim", "demo", "--force")
    assert chosen.returncode == 0, chosen.stderr
    wait_for(lambda: _is(lab, "a", "SECOND") and _state(lab, "a")["up_to_date"], 60, "a follows")  # type: ignore[index]
    assert not (lab.copy("a") / "a.db").exists() and (lab.copy("a") / "b.db").exists()
    aside = lab.directory / "nodes" / "a" / "state" / "modules" / "demo" / "aside"
    (kept,) = aside.iterdir()  # what differed, kept before the resync replaced it
    assert (kept / "a.db").read_bytes() == b"kept by a"
    assert sorted(path.name for path in kept.iterdir()) == ["REPORT.txt", "a.db"]
    assert "held data of its own" in (kept / "REPORT.txt").read_text()


def test_forged_and_garbage_heartbeats_are_counted_and_change_nothing(lab: LabCluster) -> None:
    forged = encode(b"not the cluster secret!", Heartbeat("b", 1, 1, b"{}")).hex()
    # a stranger's datagrams never reach the service (its socket only takes the peer's): these
    # come as if from b's address and heartbeat port, as an attacker on the segment can send
    hexes = [forged, (b"garbage" * 10).hex(), forged]
    spoof = [sys.executable, SPOOF, "198.18.0.2", "7400", "198.18.0.1", "7400", *hexes]
    sent = lab.exec("client", *spoof)
    assert sent.returncode == 0, sent.stderr

    def rejected() -> dict[str, int]:
        state = _state(lab, "a")
        assert state is not None
        counts: dict[str, int] = state["peer"]["heartbeat"]["rejected"]
        return counts

    wait_for(lambda: sum(rejected().values()) >= 3, 10, "the rejects counted")
    assert rejected().get("malformed") == 1 and rejected().get("forged") == 2
    time.sleep(1.5)
    assert _settled(lab, "a")  # nothing believed: a serves, b follows


def test_a_heartbeat_flood_forges_no_failover(lab: LabCluster, workspace: Path) -> None:
    """A third host floods both nodes' heartbeat port as fast as it can, and the same host
    sends datagrams as if from each node's own heartbeat port (an attacker on the segment);
    neither may be believed, and none may crowd out the real heartbeats: no state changes,
    never two holders of the VIP, and the refusals are summed up in a line or two."""
    logs = [lab.directory / f"nodes/{n}/state/modules/demo/module.log" for n in ("a", "b")]
    before = [len(log.read_text().splitlines()) for log in logs]
    flood = (
        "import socket, time\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "end = time.monotonic() + 12\n"
        "while time.monotonic() < end:\n"
        "    for node in ('198.18.0.1', '198.18.0.2'):\n"
        "        s.sendto(b'x' * 200, (node, 7400))\n"
    )
    garbage = (b"\x00" * 120).hex()
    with Monitor(lab) as monitor:
        flooder = lab.popen("client", sys.executable, "-c", flood)
        try:
            for _ in range(10):  # as if from the peer: counted, refused
                for source, target in (("198.18.0.2", "198.18.0.1"), ("198.18.0.1", "198.18.0.2")):
                    spoof = [sys.executable, SPOOF, source, "7400", target, "7400", garbage]
                    sent = lab.exec("client", *spoof, "--repeat", "300")
                    assert sent.returncode == 0, sent.stderr
                time.sleep(1)
            flooder.wait(timeout=30)
        finally:
            stop_group(flooder)
    assert monitor.violations == []
    assert monitor.samples > 50
    after = [log.read_text().splitlines() for log in logs]
    assert [lines[count:] for lines, count in zip(after, before, strict=True)] == [[], []]
    assert _settled(lab, "a")
    state = _state(lab, "a")
    assert state is not None
    assert state["peer"]["heartbeat"]["rejected"].get("malformed", 0) >= 1000
    summaries = [line for line in lab.log("a").splitlines() if "packet(s) refused" in line]
    assert 1 <= len(summaries) <= 3, summaries


def test_no_false_failover_under_heavy_write_load(lab: LabCluster, workspace: Path) -> None:
    """Both cores busy: the serving node rewrites a 128 MiB file through the mirror as fast as
    it can while the client writes at the VIP; nothing may be declared lost."""
    logs = [lab.directory / f"nodes/{n}/state/modules/demo/module.log" for n in ("a", "b")]
    before = [len(log.read_text().splitlines()) for log in logs]
    writer = lab.popen(
        "a",
        "sh",
        "-c",
        f"while :; do dd if=/dev/zero of={lab.path}/load bs=1M count=128 conv=notrunc "
        "status=none; done",
    )
    try:
        done = lab.exec(
            "client",
            *APP,
            *["client", VIP, str(APP_PORT), "--log", str(workspace / "acked.log")],
            *["--seconds", "45"],
        )
        assert done.returncode == 0, done.stderr
    finally:
        stop_group(writer)
    changes = [
        line
        for log, skip in zip(logs, before, strict=True)
        for line in log.read_text().splitlines()[skip:]
        if " -> " in line and ("ALONE" in line or "WAIT" in line or "STOP" in line)
    ]
    assert not changes, changes
    assert _is(lab, "a", "PRIM") and _is(lab, "b", "SECOND")
    assert json.loads(done.stdout)["acknowledged"] > 100


def test_a_split_brain_keeps_the_yielding_sides_changes_aside(lab: LabCluster) -> None:
    """Both nodes still reach the witness but not each other: both serve (nothing can tell this
    from a death). When they meet again the default primary (a) keeps serving; b follows, keeping
    aside (with a report naming them) the paths the resync changes in its copy — exactly those
    that differ — and says so."""
    lab.cli("partition", "--witness", "both")
    wait_for(lambda: _is(lab, "b", "ALONE"), 15, "b serving on its side")
    assert _is(lab, "a", *SERVING)
    written_b = lab.exec("b", "sh", "-c", f"echo from-b > {lab.path}/only-on-b")
    assert written_b.returncode == 0, written_b.stderr
    # a's writes wait for the unreachable secondary until the replication timeout, then go on
    written_a = lab.exec("a", "sh", "-c", f"echo from-a > {lab.path}/only-on-a", timeout=60)
    assert written_a.returncode == 0, written_a.stderr
    lab.cli("heal")
    wait_for(lambda: _settled(lab, "a"), 60, "a serving and b in sync after the heal")
    log_b = (lab.directory / "nodes/b/state/modules/demo/module.log").read_text()
    assert "split brain: both nodes served; a keeps serving, this node yields" in log_b
    # what differed from a's copy, kept before the resync replaced it: b's file, not the rest
    (kept,) = (lab.directory / "nodes/b/state/modules/demo/aside").iterdir()
    assert (kept / "only-on-b").read_text() == "from-b\n"
    assert not (kept / "only-on-a").exists()  # not in b's copy: nothing of b's to keep
    report = (kept / "REPORT.txt").read_text()
    assert "split brain" in report and "only-on-b: file, 7 bytes" in report
    assert (lab.copy("b") / "only-on-a").read_text() == "from-a\n"
    assert not (lab.copy("b") / "only-on-b").exists()  # the copies agree again: a's
