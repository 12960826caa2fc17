"""An attacker on the network, with real processes (issue 14): a relay without the secret that
injects, alters, drops, replays and reorders the primary's frames after the handshake (each is
detected, nothing of it applied, the receiver lives on and the primary reconnects and brings
the copy level); a capture of the stream shows no plaintext of what the application wrote;
a flood of unauthenticated connections during a write load costs the pair nothing."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tandem.engine.lab.lab import Lab
from tandem.fsdriver.mount import is_tandem_mount
from tests.helpers.lab import LabCluster
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Pair, free_port
from tests.helpers.treediff import diff, snapshot

pytestmark = pytest.mark.root

TAMPER = str(Path(__file__).parents[1] / "helpers" / "tamper.py")
TIMEOUT = 2.0
WITHHELD = ("drop", "reorder")  # frames that do not arrive (in time) rather than arrive wrong


@pytest.fixture
def pair(make_pair: Callable[[float], Pair]) -> Pair:
    return make_pair(TIMEOUT)


def _write_files(directory: Path, prefix: str, count: int) -> None:
    for index in range(count):
        path = directory / f"{prefix}-{index}"
        path.write_bytes(f"{prefix} {index} ".encode() * 500)


def _level(pair: Pair) -> bool:
    return not diff(snapshot(str(pair.a)), snapshot(str(pair.b)))


@pytest.mark.parametrize("mode", ["inject", "flip", "drop", "replay", "reorder"])
def test_a_relay_without_the_secret_is_detected_and_nothing_of_it_is_applied(
    pair: Pair, mode: str
) -> None:
    secondary = pair.start_secondary()
    relay_port = free_port()
    relay = subprocess.Popen(
        [sys.executable, TAMPER, mode, str(relay_port), str(pair.port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert relay.stdout is not None and relay.stdout.readline().strip() == "listening"
        primary = pair.start_primary("--journal", str(pair.base / "journal"), via=relay_port)
        _write_files(pair.a, "before", 40)
        assert relay.stdout.readline().strip() == f"tampered {mode}"
        if mode in WITHHELD:
            # the frame missing is the one a writer waits on: nothing follows it that could
            # fail to open; the primary's deadline catches it instead
            wait_for(
                lambda: (
                    "failed authentication" in secondary.log()
                    or "did not acknowledge" in primary.log()
                ),
                30,
                "the withheld frame to be noticed",
            )
        else:
            secondary.wait_log("failed authentication")
        _write_files(pair.a, "after", 40)
        # the primary reconnects (through the relay, honest from now on) and resyncs
        wait_for(lambda: _level(pair), 60, "the copies to be level again")
        assert not (pair.b / "INJECTED").exists()
        assert secondary.alive() and primary.alive() and is_tandem_mount(str(pair.a))
        for node in (primary, secondary):
            assert "Traceback" not in node.log(), node.log()
        assert secondary.log().count("failed authentication") <= 1, secondary.log()
    finally:
        relay.kill()
        relay.communicate()


MARKER = b"TANDEM-PLAINTEXT-MARKER-7c1e"
CONTROL = b"CAPTURE-CONTROL-IN-CLEAR-5d2a"


def test_a_capture_of_the_stream_shows_no_plaintext(pair: Pair) -> None:
    capture_file = pair.base / "stream.pcap"
    capture = subprocess.Popen(
        # --immediate-mode: without it this kernel's capture ring hands nothing over in time
        [
            "tcpdump",
            "-i",
            "lo",
            "--immediate-mode",
            "-U",
            "-w",
            str(capture_file),
            "-s",
            "0",
            "tcp",
            "port",
            str(pair.port),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        assert capture.stderr is not None
        wait_for(lambda: b"listening" in (capture.stderr.readline() or b"x"), 20, "tcpdump")
        pair.start_secondary()
        pair.start_primary()
        (pair.a / "note").write_bytes(MARKER * 200)
        (pair.a / MARKER.decode()).write_bytes(b"named after the marker")
        wait_for(lambda: (pair.b / "note").exists() and _level(pair), 30, "the write replicated")
        assert (pair.b / "note").read_bytes() == MARKER * 200  # it did cross the network
        # the control: what a stranger sends in clear to the same port is in the capture
        with socket.create_connection(("127.0.0.1", pair.port)) as stranger:
            stranger.sendall(CONTROL)
    finally:
        _stop(capture)
    _assert_only_ciphertext(capture_file.read_bytes(), 100 * len(MARKER))


def _stop(capture: subprocess.Popen[bytes]) -> None:
    time.sleep(0.5)  # what crossed last is written out
    capture.terminate()
    capture.communicate(timeout=20)


def _assert_only_ciphertext(captured: bytes, least: int) -> None:
    assert CONTROL in captured, "the capture sees what crosses in clear the same way"
    assert len(captured) > least, "the capture holds the stream"
    assert MARKER not in captured and MARKER[:12] not in captured


def test_a_capture_on_the_lab_s_cable_shows_no_plaintext(lab: LabCluster) -> None:
    """The same, as the issue asks it: two nodes in their own namespaces, tcpdump on node a's
    cable in the switch, an application writing through the mount."""
    capture_file = lab.directory / "cable.pcap"
    switch = Lab.at(str(lab.directory)).netns("sw")
    capture = subprocess.Popen(
        [
            "ip", "netns", "exec", switch,
            "tcpdump", "-i", "to-a", "--immediate-mode", "-U", "-w", str(capture_file), "-s", "0",
        ],
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert capture.stderr is not None
        wait_for(lambda: b"listening" in (capture.stderr.readline() or b"x"), 20, "tcpdump")
        # random bytes between the markers: compression cannot make the stream small, and the
        # first marker is a literal in what would cross in clear
        content = b"".join(MARKER + os.urandom(100) for _ in range(200))
        (lab.directory / "content").write_bytes(content)
        written = lab.exec("a", "cp", str(lab.directory / "content"), str(lab.path / "note"))
        assert written.returncode == 0, written.stderr
        wait_for(lambda: (lab.copy("b") / "note").exists(), 30, "the write replicated")
        wait_for(lambda: (lab.copy("b") / "note").read_bytes() == content, 30, "all of it")
        # the control: what crosses the same cable in clear is in the capture
        sent = lab.exec(
            "a", sys.executable, "-c",
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
            f".sendto({CONTROL!r}, ('198.18.0.2', 9))",
        )  # fmt: skip
        assert sent.returncode == 0, sent.stderr
    finally:
        _stop(capture)
    _assert_only_ciphertext(capture_file.read_bytes(), 200 * 100)  # its random bytes at least


FLOOD = str(Path(__file__).parents[1] / "helpers" / "flood.py")
FLOODERS, EACH = 2, 12_000  # more than one process may hold (20,000 descriptors here)


def _flooder(pair: Pair, count: int, source: str, *churn: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, FLOOD, str(count), "127.0.0.1", str(pair.port), source, *churn],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def _holding(flooder: subprocess.Popen[str]) -> int:
    assert flooder.stdout is not None
    return int(flooder.stdout.readline().split()[1])


def test_a_connection_flood_during_a_write_load_costs_the_pair_nothing(pair: Pair) -> None:
    """Tens of thousands of unauthenticated connections held open against the receiver while
    the application writes: no write fails, the primary never goes on alone, the receiver
    never runs out of descriptors, and its log stays small. Then, under a flood that never
    settles (new strangers all the time, from another address), the stream is broken: the
    primary gets back in within a reconnection or two."""
    secondary = pair.start_secondary()
    primary = pair.start_primary()
    log_before = len(secondary.log())
    flooders = [_flooder(pair, EACH, "127.0.0.2") for _ in range(FLOODERS)]
    try:
        writer = 0
        while any(f.poll() is None and not _ready(f) for f in flooders):
            (pair.a / f"during-{writer}").write_bytes(b"w" * 40_000)
            writer += 1
        held = sum(_holding(f) for f in flooders)
        assert held >= 20_000, f"only {held} connections were held"
        _write_files(pair.a, "flooded", 50)
        wait_for(lambda: _level(pair), 60, "the copies level under the flood")
        time.sleep(2 * TIMEOUT)  # the strangers' deadlines pass while they are held
        _write_files(pair.a, "later", 20)
        wait_for(lambda: _level(pair), 60, "the copies level after the deadlines")
        assert "going on alone" not in primary.log(), primary.log()[-3000:]
        grown = secondary.log()[log_before:]
        assert "EMFILE" not in grown and "Too many open files" not in grown, grown[-3000:]
        assert len(grown) < 20_000, f"the log grew by {len(grown)} bytes: {grown[-2000:]}"

        # two processes that replace their connections as fast as they can: more than the
        # listen queue holds arrive between two accepts unless the door drains it faster
        churners = [_flooder(pair, 1000, source, "churn") for source in ("127.0.0.3", "127.0.0.4")]
        flooders += churners
        for churner in churners:
            _holding(churner)
        connected = primary.log().count("replicating")
        ended = subprocess.run(
            ["ss", "-K", "-t", "src", "127.0.0.1", "dport", "=", f":{pair.port}"],
            capture_output=True,
            text=True,
        )
        assert ended.returncode == 0, ended.stderr
        wait_for(lambda: primary.log().count("replicating") > connected, 15, "the primary back in")
        _write_files(pair.a, "churned", 20)
        wait_for(lambda: _level(pair), 60, "the copies level under a churning flood")
        assert all(churner.poll() is None for churner in churners), "the flood went on all along"
        assert secondary.alive() and primary.alive()
    finally:
        for flooder in flooders:
            flooder.kill()
            flooder.communicate()


def _ready(flooder: subprocess.Popen[str]) -> bool:
    """Whether the flooder holds its connections (it said so on stdout)."""
    assert flooder.stdout is not None
    return bool(select.select([flooder.stdout], [], [], 0)[0])
