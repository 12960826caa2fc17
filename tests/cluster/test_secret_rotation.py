"""The cluster secret rotated on a running lab, one node at a time, as the operations guide says
(issue 14): the application writes all along, no node ever leaves PRIM/SECOND, no heartbeat or
connection is refused; retiring the old secret is refused while the peer still signs with it;
and once both nodes retired it, a new connection works with the new secret alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time

import pytest

from tests.cluster.test_failover import _state
from tests.helpers.lab import LabCluster, stop_group
from tests.helpers.mountproc import wait_for

pytestmark = pytest.mark.root

TANDEM = [sys.executable, "-m", "tandem.engine.cli"]


def _settled(lab: LabCluster) -> bool:
    a, b = _state(lab, "a"), _state(lab, "b")
    return (
        a is not None
        and b is not None
        and a["state"] == "PRIM"
        and b["state"] == "SECOND"
        and b["up_to_date"]
    )


def _signs_with(lab: LabCluster, node: str) -> str | None:
    found = _state(lab, node)
    return None if found is None else found["peer"]["signs_with"]


def _secret(lab: LabCluster, node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return lab.exec(node, *TANDEM, "secret", *args)


def test_a_rotation_one_node_at_a_time_never_cuts_the_pair(failover_lab: LabCluster) -> None:
    lab = failover_lab
    wait_for(lambda: _settled(lab), 60, "a serving, b in sync")
    seen: set[tuple[str, str]] = set()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for node in ("a", "b"):
                found = _state(lab, node)
                seen.add((node, found["state"] if found else "no answer"))
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    script = f"set -e; i=0; while :; do echo $i > {lab.path}/w$i; i=$((i+1)); sleep 0.05; done"
    writer = lab.popen("a", "sh", "-c", script)
    watcher.start()
    try:
        created = _secret(lab, "a", "new", "--next")
        assert created.returncode == 0, created.stderr
        etc = {node: lab.directory / "nodes" / node / "etc" for node in ("a", "b")}
        shutil.copy2(etc["a"] / "secret.next", etc["b"] / "secret.next")  # as scp -p would

        assert _secret(lab, "a", "promote").returncode == 0
        # a signs with the new secret, b with the old one, which a now holds as previous
        wait_for(lambda: _signs_with(lab, "a") == "previous", 20, "a to hear b's old secret")
        early = _secret(lab, "a", "retire")
        assert early.returncode == 1 and "still signs with the previous secret" in early.stderr
        assert (etc["a"] / "secret.previous").exists()

        assert _secret(lab, "b", "promote").returncode == 0
        wait_for(lambda: _signs_with(lab, "a") == "current", 20, "b signing with the new one")
        wait_for(lambda: _signs_with(lab, "b") == "current", 20, "a signing with the new one")
        for node in ("a", "b"):
            retired = _secret(lab, node, "retire")
            assert retired.returncode == 0, retired.stderr
        status = _secret(lab, "a", "status")
        assert "previous" not in status.stdout.split(":", 1)[1].split("\n")[0], status.stdout

        stop.set()  # what follows breaks the stream on purpose: its states are not the rotation's
        watcher.join()
        rotation_states = set(seen)
        # a new connection after the rotation: the old secret is gone on both sides
        time.sleep(1.5)  # the nodes look at their files once a second
        seen_before = lab.log("b").count("primary a connected")
        ended = lab.exec("a", "ss", "-K", "-t", "dst", "198.18.0.2", "dport", "=", ":7400")
        assert ended.returncode == 0, ended.stderr
        wait_for(
            lambda: lab.log("b").count("primary a connected") > seen_before,
            30,
            "the primary reconnected with the new secret",
        )
        wait_for(lambda: _settled(lab), 60, "b in sync again")
        assert writer.poll() is None, "a write failed during the rotation"
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        stop_group(writer)
    assert rotation_states == {("a", "PRIM"), ("b", "SECOND")}, rotation_states
    for node in ("a", "b"):
        log = lab.log(node)
        assert "failed authentication" not in log and "Traceback" not in log, log[-3000:]
        assert "keeping the secrets read before" not in log
    written = sorted(int(p.name[1:]) for p in lab.copy("b").iterdir() if p.name.startswith("w"))
    assert len(written) > 20
