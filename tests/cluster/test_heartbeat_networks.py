"""Heartbeats between two real network namespaces joined by two links: losing one link is a
degraded cluster, never a lost peer; losing both is; forged, replayed and garbage datagrams are
counted and change nothing."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tandem.heartbeat.packet import Heartbeat, encode

pytestmark = pytest.mark.root

SECRET = b"heartbeat-test-secret-0123456789"
SPOOF = str(Path(__file__).parents[1] / "helpers" / "spoof.py")
PORT = 7399
LINKS = {"net1": ("198.18.41.1", "198.18.41.2"), "net2": ("198.18.42.1", "198.18.42.2")}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Node:
    def __init__(self, netns: str, name: str, peer: str, secret_file: Path) -> None:
        self.netns = netns
        side = 0 if name == "a" else 1
        links = [f"--link={n}={a[side]},{a[1 - side]}" for n, a in LINKS.items()]
        command = [sys.executable, "-m", "tandem.heartbeat.service", "--node", name]
        command += ["--peer", peer, "--secret-file", str(secret_file), *links]
        command += ["--interval", "0.1", "--timeout", "0.6"]
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def wait_for(self, verdict: str, timeout: float = 5.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(status)
            if status["verdict"] == verdict:
                return status
        if self.process.poll() is not None:
            assert self.process.stderr is not None
            raise AssertionError(f"{self.netns}: exited: {self.process.stderr.read()}")
        raise AssertionError(f"{self.netns}: no {verdict!r} within {timeout} s: {self.seen}")

    def drain(self) -> list[dict[str, Any]]:
        found = []
        while not self.lines.empty():
            found.append(self.lines.get())
        self.seen += found
        return found

    def stop(self) -> None:
        self.process.kill()
        self.process.communicate()


@pytest.fixture
def pair(workspace: Path) -> Iterator[tuple[Node, Node, str, str]]:
    tag = f"hb{os.getpid() % 100000}"
    ns_a, ns_b = f"{tag}-a", f"{tag}-b"
    secret = workspace / "secret"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    nodes: list[Node] = []
    try:
        _ip("netns", "add", ns_a)
        _ip("netns", "add", ns_b)
        for index, (address_a, address_b) in enumerate(LINKS.values(), start=1):
            _ip("-n", ns_a, "link", "add", f"v{index}", "type", "veth", "peer", "name", "w")
            _ip("-n", ns_a, "link", "set", "w", "netns", ns_b, "name", f"v{index}")
            _ip("-n", ns_a, "addr", "add", f"{address_a}/24", "dev", f"v{index}")
            _ip("-n", ns_b, "addr", "add", f"{address_b}/24", "dev", f"v{index}")
            _ip("-n", ns_a, "link", "set", f"v{index}", "up")
            _ip("-n", ns_b, "link", "set", f"v{index}", "up")
        nodes = [Node(ns_a, "a", "b", secret), Node(ns_b, "b", "a", secret)]
        yield nodes[0], nodes[1], ns_a, ns_b
    finally:
        for node in nodes:
            node.stop()
        for netns in (ns_a, ns_b):
            subprocess.run(["ip", "netns", "delete", netns], capture_output=True)


def test_one_link_down_is_degraded_both_down_is_lost(pair: tuple[Node, Node, str, str]) -> None:
    a, b, ns_a, _ = pair
    a.wait_for("alive")
    b.wait_for("alive")
    _ip("-n", ns_a, "link", "set", "v1", "down")
    degraded = b.wait_for("degraded")
    assert degraded["networks"]["net1"]["silent_for_s"] > 0.6
    a.wait_for("degraded")
    time.sleep(2.0)  # a lasting single-link failure never becomes a lost peer
    assert all(s["verdict"] == "degraded" for s in a.drain() + b.drain())
    _ip("-n", ns_a, "link", "set", "v2", "down")
    started = time.monotonic()
    b.wait_for("lost")
    a.wait_for("lost")
    assert time.monotonic() - started < 2.0
    _ip("-n", ns_a, "link", "set", "v1", "up")
    _ip("-n", ns_a, "link", "set", "v2", "up")
    a.wait_for("alive")
    b.wait_for("alive")


def test_a_socket_the_kernel_destroys_is_opened_again(pair: tuple[Node, Node, str, str]) -> None:
    """`ss -K` (the lab's delay fault did it) destroys a node's heartbeat sockets: the service
    opens them again and keeps its peer; before, the receive error ended the whole node."""
    a, b, ns_a, _ = pair
    a.wait_for("alive")
    b.wait_for("alive")
    destroyed = subprocess.run(
        ["ip", "netns", "exec", ns_a, "ss", "-K", "-u", "sport", "=", f":{PORT}"],
        capture_output=True,
        text=True,
    )
    assert destroyed.returncode == 0 and f":{PORT}" in destroyed.stdout, destroyed
    time.sleep(1.5)  # longer than the timeout: a service that lost its sockets loses its peer
    assert a.process.poll() is None, "the service ended with its sockets"
    a.drain()
    b.drain()
    assert a.seen[-1]["verdict"] == "alive" and b.seen[-1]["verdict"] == "alive", (a.seen, b.seen)
    a.process.kill()
    _, errors = a.process.communicate()
    assert "opening the socket again" in errors, errors


def test_forged_replayed_and_garbage_datagrams_are_counted(
    pair: tuple[Node, Node, str, str],
) -> None:
    _, b, ns_a, _ = pair
    b.wait_for("alive")
    datagrams = [
        b"garbage",
        encode(b"not-the-cluster-secret", Heartbeat("a", time.time_ns(), 10)),
        encode(SECRET, Heartbeat("a", 1, 10)),  # an earlier run of a: a replay
        encode(SECRET, Heartbeat("mallory", time.time_ns(), 1)),
    ]
    # from a's address and heartbeat port, as only the peer can (anyone else's are dropped by
    # the kernel: `test_a_stranger_s_datagrams_never_reach_the_service`)
    hexes = [d.hex() for d in datagrams]
    spoof = [sys.executable, SPOOF, "198.18.41.1", str(PORT), "198.18.41.2", str(PORT), *hexes]
    subprocess.run(["ip", "netns", "exec", ns_a, *spoof], check=True)
    deadline = time.monotonic() + 5
    rejected: dict[str, int] = {}
    while time.monotonic() < deadline and sum(rejected.values()) < 4:
        time.sleep(0.1)
        for status in b.drain():
            rejected = status["rejected"]
            assert status["verdict"] == "alive", status
    assert rejected == {"malformed": 1, "forged": 1, "replayed": 1, "stranger": 1}


def test_a_stranger_s_datagrams_never_reach_the_service(
    pair: tuple[Node, Node, str, str],
) -> None:
    """A flood from another port of the peer's host (or any other host) is dropped by the
    kernel: the socket is connected to the peer's address and port."""
    _, b, ns_a, _ = pair
    b.wait_for("alive")
    flood = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "s.bind(('198.18.41.1', 0))\n"
        "for _ in range(20000):\n"
        f"    s.sendto(b'garbage' * 20, ('198.18.41.2', {PORT}))\n"
    )
    subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, "-c", flood], check=True)
    # then one datagram from the peer's own port: the only one the service ever sees
    spoof = [sys.executable, SPOOF, "198.18.41.1", str(PORT), "198.18.41.2", str(PORT)]
    subprocess.run(["ip", "netns", "exec", ns_a, *spoof, b"garbage".hex()], check=True)
    deadline = time.monotonic() + 5
    rejected: dict[str, int] = {}
    while time.monotonic() < deadline and not rejected:
        time.sleep(0.1)
        for status in b.drain():
            rejected = status["rejected"]
            assert status["verdict"] == "alive", status
    assert rejected == {"malformed": 1}
