"""`tandem lab` and the node process: two nodes in their own namespaces, the same path on both,
replication between them, a crash that takes every process of a node, a reboot, a cut cable,
and a teardown that leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tandem.engine.lab.lab import Lab
from tandem.fsdriver.mount import mounts_at
from tests.helpers.lab import CLI, LabCluster
from tests.helpers.mountproc import wait_for

pytestmark = pytest.mark.root


def test_a_write_on_the_primary_is_on_the_secondary_at_the_same_path(lab: LabCluster) -> None:
    hello = lab.path / "hello"
    done = lab.exec("a", "sh", "-c", f"echo from-a > {hello} && chmod 640 {hello}")
    assert done.returncode == 0, done.stderr
    seen = lab.exec("b", "cat", str(hello))
    assert seen.stdout == "from-a\n"
    assert (lab.copy("b") / "hello").stat().st_mode & 0o777 == 0o640
    # each node has its own copy: the host's directory at that path stays empty
    assert list(lab.path.iterdir()) == []
    assert not mounts_at(str(lab.path))


def test_the_secondary_copy_is_read_only_and_exit_codes_are_kept(lab: LabCluster) -> None:
    refused = lab.exec("b", "sh", "-c", f"echo x > {lab.path}/diverge")
    assert refused.returncode != 0
    assert "Read-only file system" in refused.stderr
    assert not (lab.copy("b") / "diverge").exists()
    assert lab.exec("a", "sh", "-c", "exit 7").returncode == 7


def test_nodes_have_their_own_addresses_and_a_cut_cable_separates_them(lab: LabCluster) -> None:
    probe = "import socket,sys; socket.create_connection((sys.argv[1], 7400), timeout=2).close()"
    reach = ["python3", "-c", probe, "198.18.0.2"]
    assert lab.exec("a", *reach).returncode == 0
    lab.cut("a")
    assert lab.exec("a", *reach).returncode != 0
    lab.heal("a")
    wait_for(lambda: lab.exec("a", *reach).returncode == 0, 10, "the link back")


def test_kill_takes_every_process_of_the_node_and_start_boots_it_again(lab: LabCluster) -> None:
    sleeper = lab.popen("a", "sleep", "600")
    wait_for(lambda: "sleep" in lab.exec("a", "ps", "-e").stdout, 10, "the sleeper")
    (lab.copy("a") / "before").write_text("on a's disk")
    # shared memory is the node's own: a killed server's segments (PostgreSQL's) die with it
    segment = f"tandem-lab-probe-{os.getpid()}"
    assert lab.exec("a", "sh", "-c", f"echo x > /dev/shm/{segment}").returncode == 0
    assert not Path("/dev/shm", segment).exists()
    lab.kill("a")
    assert sleeper.wait(10) != 0  # died with its node
    assert lab.exec("a", "true").returncode != 0  # nothing left to enter
    assert "down" in lab.cli("status").stdout.splitlines()[1]
    # the secondary does not notice a crash as an error, only a closed connection
    wait_for(lambda: "the primary closed the connection" in lab.log("b"), 10, "b noticing")

    lab.start("a")
    assert (lab.copy("a") / "before").read_text() == "on a's disk"  # its disk as the crash left it
    assert lab.exec("a", "test", "-e", f"/dev/shm/{segment}").returncode != 0  # not its memory
    assert lab.exec("a", "sh", "-c", f"echo again > {lab.path}/after").returncode == 0
    assert (lab.copy("b") / "after").read_text() == "again\n"
    assert lab.log("a").count("node a ready") == 2


def test_down_removes_every_namespace_mount_process_and_file(workspace: Path) -> None:
    cluster = LabCluster(workspace / "lab").up()
    state = json.loads((cluster.directory / "lab.json").read_text())
    pids = list(state["pids"].values())
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    ours = Lab.at(str(cluster.directory))
    tags = [ours.netns(name) for name in ("a", "b", "sw")]
    present = [line.split()[0] for line in netns.splitlines()]
    assert all(tag in present for tag in tags)
    cluster.down()
    assert not cluster.directory.exists()
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()
    after = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    remaining = [line.split()[0] for line in after.splitlines()]
    assert not [tag for tag in tags if tag in remaining]
    again = cluster.cli("status", check=False)
    assert again.returncode == 1 and "no lab" in again.stderr


def test_a_second_up_and_bad_node_names_are_refused(lab: LabCluster) -> None:
    again = lab.cli("up", check=False)
    assert again.returncode == 1 and "already up" in again.stderr
    unknown = lab.cli("kill", "c", check=False)
    assert unknown.returncode == 1 and "no node 'c'" in unknown.stderr
    running = lab.cli("start", "a", check=False)
    assert running.returncode == 1 and "already running" in running.stderr


def test_two_labs_in_different_directories_run_side_by_side(
    lab: LabCluster, workspace: Path
) -> None:
    other = LabCluster(workspace / "other").up()
    try:
        for cluster, word in ((lab, "first"), (other, "second")):
            done = cluster.exec("a", "sh", "-c", f"echo {word} > {cluster.path}/which")
            assert done.returncode == 0, done.stderr
        assert (lab.copy("b") / "which").read_text() == "first\n"
        assert (other.copy("b") / "which").read_text() == "second\n"
    finally:
        other.down()


def test_partitions_choose_who_reaches_the_witness_and_heal(lab: LabCluster) -> None:
    def pings(node: str, address: str) -> bool:
        return lab.exec(node, "ping", "-n", "-q", "-c1", "-W1", address).returncode == 0

    witness, a, b = "198.18.0.254", "198.18.0.1", "198.18.0.2"
    assert "witness (the switch): 198.18.0.254" in lab.cli("status").stdout
    assert pings("a", b) and pings("client", a) and pings("client", b)
    lab.cli("partition")  # only the link between the nodes fails
    assert not pings("a", b) and not pings("b", a)
    assert pings("a", witness) and pings("b", witness)
    assert pings("client", a) and pings("client", b)
    lab.cli("partition", "--witness", "a")
    assert pings("a", witness) and not pings("b", witness) and not pings("a", b)
    lab.cli("partition", "--witness", "none")
    assert not pings("a", witness) and not pings("b", witness)
    bad = lab.cli("partition", "--witness", "c", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr
    lab.cut("b")
    assert "healed" in lab.cli("heal").stdout
    wait_for(lambda: pings("a", b) and pings("b", witness), 10, "the network back")


def test_the_lab_commands_work_as_printed(lab: LabCluster) -> None:
    """What a new user types: `tandem` inside a node without the virtualenv on PATH, `--dir`
    after the action, the hints `status` prints (they keep `--dir`), `lab logs`."""
    bare = subprocess.run(
        [*lab.on("a"), "tandem", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert bare.returncode == 0 and bare.stdout.startswith("tandem "), bare.stderr
    status = subprocess.run(
        [*CLI, "lab", "status", "--dir", str(lab.directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    hints = [line for line in status.stdout.splitlines() if "tandem lab " in line]
    assert hints and all(f"--dir {lab.directory}" in line for line in hints), status.stdout
    logs = lab.cli("logs", "a", "-n", "3")
    assert 0 < len(logs.stdout.splitlines()) <= 3
    written = (lab.directory / "nodes" / "a" / "node.log").read_text()
    assert all(line in written.splitlines() for line in logs.stdout.splitlines())
    refused = lab.cli("logs", "a", "-n", "-3", check=False)
    assert refused.returncode == 2 and "not a number of lines" in refused.stderr
