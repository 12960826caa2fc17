"""The virtual IP on real interfaces in real network namespaces: added, verified, announced
(a neighbour's stale ARP entry for it is corrected at once), idempotent, removed; bad input
named. A client namespace on the same bridge reaches it only while a node holds it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.root

VIP = "198.18.50.100/24"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def vip(netns: str, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "tandem.vip.address", *args]
    return subprocess.run(["ip", "netns", "exec", netns, *command], capture_output=True, text=True)


@pytest.fixture
def lan() -> Iterator[dict[str, str]]:
    """Namespaces node1, node2 and client on one bridge (in a switch namespace)."""
    tag = f"vip{os.getpid() % 100000}"
    names = {role: f"{tag}-{role}" for role in ("sw", "node1", "node2", "client")}
    addresses = {"node1": "198.18.50.1", "node2": "198.18.50.2", "client": "198.18.50.3"}
    try:
        for netns in names.values():
            ip("netns", "add", netns)
        ip("-n", names["sw"], "link", "add", "br0", "type", "bridge")
        ip("-n", names["sw"], "link", "set", "br0", "up")
        for role, address in addresses.items():
            ip("-n", names["sw"], "link", "add", role, "type", "veth", "peer", "name", "eth0")
            ip("-n", names["sw"], "link", "set", "eth0", "netns", names[role])
            ip("-n", names["sw"], "link", "set", role, "master", "br0", "up")
            ip("-n", names[role], "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", names[role], "link", "set", "eth0", "up")
        yield names
    finally:
        for netns in names.values():
            ip("netns", "delete", netns, check=False)


def reachable(names: dict[str, str]) -> bool:
    done = subprocess.run(
        ["ip", "netns", "exec", names["client"], "ping", "-c1", "-W1", VIP.split("/")[0]],
        capture_output=True,
    )
    return done.returncode == 0


def mac_of(netns: str) -> str:
    return ip("-n", netns, "-br", "link", "show", "eth0").stdout.split()[2]


def test_the_vip_moves_between_nodes_and_neighbours_follow(lan: dict[str, str]) -> None:
    assert not reachable(lan)
    added = vip(lan["node1"], "add", "eth0", VIP)
    assert added.returncode == 0 and "added 198.18.50.100/24 to eth0" in added.stdout
    assert "gratuitous ARP" in added.stdout
    assert vip(lan["node1"], "check", "eth0", VIP).returncode == 0
    again = vip(lan["node1"], "add", "eth0", VIP)
    assert again.returncode == 0 and "already on eth0" in again.stdout
    assert reachable(lan)
    neighbour = ip("-n", lan["client"], "neigh", "show", "198.18.50.100").stdout
    assert mac_of(lan["node1"]) in neighbour

    # failover: node1 lets go, node2 takes it; the client's ARP entry must follow at once
    assert "removed" in vip(lan["node1"], "remove", "eth0", VIP).stdout
    assert vip(lan["node1"], "check", "eth0", VIP).returncode == 1
    assert "was not on eth0" in vip(lan["node1"], "remove", "eth0", VIP).stdout
    assert vip(lan["node2"], "add", "eth0", VIP).returncode == 0
    neighbour = ip("-n", lan["client"], "neigh", "show", "198.18.50.100").stdout
    assert mac_of(lan["node2"]) in neighbour, neighbour  # updated by the gratuitous ARP
    assert reachable(lan)


def test_bad_input_is_named(lan: dict[str, str]) -> None:
    missing = vip(lan["node1"], "add", "eth9", VIP)
    assert missing.returncode == 1 and "no network interface 'eth9'" in missing.stderr
    bare = vip(lan["node1"], "add", "eth0", "198.18.50.100")
    assert bare.returncode == 1 and "needs its prefix length" in bare.stderr
    junk = vip(lan["node1"], "add", "eth0", "not-an-ip/24")
    assert junk.returncode == 1 and "is not ADDRESS/PREFIX" in junk.stderr
