"""Operating reintegration on a real `tandem lab` pair, through the commands an admin types:
`tandem state` (with the resync's progress), `tandem verify` (while the application writes,
and after a deliberate divergence), `tandem resync --full`; and the node's own journals making
a returning secondary's resync tracked."""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any

import pytest

from tests.helpers.lab import LabCluster, stop_group
from tests.helpers.mountproc import wait_for
from tests.helpers.treediff import diff, snapshot

pytestmark = pytest.mark.root

MIB = 1 << 20
TANDEM = [os.path.join(os.path.dirname(sys.executable), "tandem")]


def tandem(lab: LabCluster, node: str, *argv: str) -> Any:
    return lab.exec(node, *TANDEM, *argv)


def state(lab: LabCluster, node: str) -> dict[str, Any]:
    done = tandem(lab, node, "state", "--json")
    assert done.returncode == 0, done.stderr + done.stdout
    (stream,) = json.loads(done.stdout)["modules"]["demo"]["streams"]
    return stream  # type: ignore[no-any-return]


def resyncs_done(lab: LabCluster) -> int:
    return lab.log("a").count("(in sync)")


def wait_in_sync(lab: LabCluster, count: int, timeout: float = 60) -> None:
    wait_for(lambda: resyncs_done(lab) >= count, timeout, f"resync #{count}")


def assert_same(lab: LabCluster) -> None:
    differences = diff(
        snapshot(str(lab.copy("a")), times=True), snapshot(str(lab.copy("b")), times=True)
    )
    assert differences == [], differences


def test_state_shows_each_side_and_names_unknown_modules(lab: LabCluster) -> None:
    wait_in_sync(lab, 1)
    primary, secondary = state(lab, "a"), state(lab, "b")
    assert (primary["role"], primary["replication"]) == ("primary", "in sync")
    assert primary["directory"] == str(lab.path) and primary["peer"] == "198.18.0.2:7400"
    assert primary["last_resync"]["how"].startswith("full comparison (no journal")
    assert (secondary["role"], secondary["replication"], secondary["peer"]) == (
        "secondary",
        "in sync",
        "a",
    )
    human = tandem(lab, "a", "state")
    assert human.returncode == 0 and "demo/0" in human.stdout and "in sync with" in human.stdout
    unknown = tandem(lab, "a", "state", "nosuch")
    assert unknown.returncode == 1 and "nosuch: never ran on this node" in unknown.stdout
    bad = tandem(lab, "a", "verify", "../etc")
    assert bad.returncode == 1 and "must be 1-63 letters" in bad.stderr


def test_a_returning_secondary_is_resynced_from_the_nodes_journals_with_progress(
    lab: LabCluster,
) -> None:
    """The node keeps journals in its state directory on both roles: a secondary that was away
    gets only what changed; meanwhile `tandem state` shows how far the resync is."""
    wait_in_sync(lab, 1)
    # cap the resync so that it lasts long enough to be watched
    module_file = lab.directory / "nodes" / "a" / "etc" / "modules" / "demo.toml"
    module_file.write_text("resync_bandwidth = 4\n" + module_file.read_text())
    lab.kill("a")
    lab.start("a")
    wait_in_sync(lab, 2)
    rng = random.Random(3)
    big = lab.path / "big"
    done = lab.exec("a", "dd", "if=/dev/urandom", f"of={big}", "bs=1M", "count=40", "status=none")
    assert done.returncode == 0, done.stderr
    time.sleep(2.5)  # acknowledged records retire with the next checkpoint (every second)
    lab.kill("b")
    changed = 0
    script = [f"f = open('{big}', 'r+b')"]
    for _ in range(6):
        offset = rng.randrange(0, 40 * MIB - 4 * MIB)
        script.append(f"f.seek({offset}); f.write(bytes([{rng.randrange(256)}]) * {4 * MIB})")
        changed += 4 * MIB
    done = lab.exec("a", sys.executable, "-c", "\n".join(script))
    assert done.returncode == 0, done.stderr
    lab.start("b")
    seen, seen_there = [], []
    deadline = time.monotonic() + 60
    while resyncs_done(lab) < 3 and time.monotonic() < deadline:
        current = state(lab, "a")
        if current["replication"] == "resyncing":
            seen.append(current["resync"])
        returning = state(lab, "b")  # the returning node shows it too
        if returning["replication"] == "resyncing" and returning["resync"]:
            seen_there.append(returning["resync"])
        time.sleep(0.2)
    wait_in_sync(lab, 3)
    assert seen, ("never saw the resync in progress", lab.log("a")[-3000:], lab.log("b")[-2000:])
    assert seen_there, "the returning node never showed the resync's progress"
    assert all(p["how"].startswith("tracked") and p["reported_s_ago"] < 5 for p in seen_there)
    assert state(lab, "b")["replication"] == "in sync"
    assert all(p["how"].startswith("tracked") for p in seen), (seen[0], lab.log("a"), lab.log("b"))
    counted = [p for p in seen if p["bytes_total"] is not None]
    assert counted, seen
    assert all(p["bytes_total"] <= changed * 1.05 for p in counted), counted
    assert any(0 < p["bytes_done"] < p["bytes_total"] and p["eta_s"] is not None for p in counted)
    assert [p["bytes_done"] for p in seen] == sorted(p["bytes_done"] for p in seen)
    last = state(lab, "a")["last_resync"]
    assert last["how"].startswith("tracked") and last["bytes_sent"] <= 1.2 * changed
    assert_same(lab)


def _writer(lab: LabCluster) -> Any:
    """An application that keeps writing, creating, renaming and removing files."""
    script = f"""
import os, random, time
rng = random.Random(11)
root = {str(lab.path)!r}
os.makedirs(root + "/w", exist_ok=True)
data = open(root + "/w/data", "wb+")
data.truncate(8 << 20)
n = 0
while True:
    data.seek(rng.randrange(0, 8 << 20)); data.write(rng.randbytes(4096)); data.flush()
    name = f"{{root}}/w/f{{n % 20}}"
    with open(name, "wb") as f:
        f.write(rng.randbytes(rng.randrange(1, 20000)))
    if n % 3 == 0:
        os.rename(name, name + ".old")
    if n % 5 == 0 and os.path.exists(name + ".old"):
        os.unlink(name + ".old")
    n += 1
    time.sleep(0.002)
"""
    return lab.popen("a", sys.executable, "-c", script)


def test_verify_finds_no_difference_while_the_application_writes(lab: LabCluster) -> None:
    wait_in_sync(lab, 1)
    writer = _writer(lab)
    try:
        time.sleep(1)
        for _ in range(3):
            done = tandem(lab, "a", "verify", "demo", "--json")
            report = json.loads(done.stdout)
            assert done.returncode == 0, done.stdout + lab.log("a")
            (stream,) = report["streams"].values()
            assert stream["identical"] and stream["bytes_compared"] >= 8 * MIB
    finally:
        stop_group(writer)
    assert writer.returncode is not None
    time.sleep(0.5)
    assert_same(lab)


def test_verify_reports_a_divergence_without_repairing_it_and_resync_full_does(
    lab: LabCluster,
) -> None:
    wait_in_sync(lab, 1)
    done = lab.exec(
        "a",
        "sh",
        "-c",
        f"dd if=/dev/urandom of={lab.path}/f bs=1M count=12 status=none && "
        f"mkdir {lab.path}/d && echo same > {lab.path}/d/x",
    )
    assert done.returncode == 0, done.stderr
    time.sleep(0.3)
    assert tandem(lab, "a", "verify", "demo").returncode == 0
    # diverge the secondary's copy behind Tandem's back: content (times kept), a stray file,
    # a mode
    theirs = lab.copy("b")
    st = os.stat(theirs / "f")
    with open(theirs / "f", "r+b") as f:
        f.seek(5 * MIB + 100)
        f.write(b"diverged")
    os.utime(theirs / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
    (theirs / "d" / "stray").write_text("only on b")
    os.chmod(theirs / "d" / "x", 0o600)
    before = snapshot(str(theirs), times=True)

    done = tandem(lab, "a", "verify", "demo")
    assert done.returncode == 1
    assert "f: content differs: 1 block(s) of 4096 from byte 5242880" in done.stdout
    assert "d/stray: a file only on the peer" in done.stdout
    assert "d/x: mode 644 here, 600 there" in done.stdout
    assert snapshot(str(theirs), times=True) == before, "verify changed the peer's copy"
    on_secondary = tandem(lab, "b", "verify", "demo")
    assert on_secondary.returncode == 1 and "run the command on the primary" in on_secondary.stdout

    done = tandem(lab, "a", "resync", "demo", "--full")
    assert done.returncode == 0 and "full comparison" in done.stdout, done.stderr
    wait_in_sync(lab, 2)
    assert "full comparison (requested by the operator)" in lab.log("a")
    assert tandem(lab, "a", "verify", "demo").returncode == 0
    assert_same(lab)


def test_verify_refuses_while_alone(lab: LabCluster) -> None:
    wait_in_sync(lab, 1)
    lab.kill("b")
    wait_for(lambda: state(lab, "a")["replication"] == "alone", 30, "going alone")
    done = tandem(lab, "a", "verify", "demo")
    assert done.returncode == 1 and "not in sync yet" in done.stdout
    assert "ALONE" in tandem(lab, "a", "state").stdout
    down = tandem(lab, "a", "resync", "demo", "--full")
    assert down.returncode == 0 and "next connection compares everything" in down.stdout
    lab.start("b")
    wait_in_sync(lab, 2)
    assert "full comparison (requested by the operator)" in lab.log("a")
