"""Bad peers, each a real process: garbage bytes, another protocol version, a peer that stalls in
the middle of a frame, before or after authenticating. The receiving side drops them with a
logged reason and never applies part of a mutation; a primary facing one goes on alone within
its timeout and never hangs a writer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.helpers.lab import LabCluster, stop_group
from tests.helpers.mountproc import wait_for
from tests.helpers.pair import Pair, fake_secondary

pytestmark = pytest.mark.root

FAKE = str(Path(__file__).parents[1] / "helpers" / "fakepeer.py")
TIMEOUT = 2.0


@pytest.fixture
def quick_lab(workspace: Path) -> Iterator[LabCluster]:
    cluster = LabCluster(workspace / "lab", timeout=TIMEOUT)
    try:
        yield cluster.up()
    finally:
        cluster.down()


def _fake_primary(lab: LabCluster, mode: str) -> list[str]:
    secret = lab.directory / "nodes" / "a" / "etc" / "secret"
    return [sys.executable, FAKE, mode, "198.18.0.2", "7400", str(secret)]


def _replicates(lab: LabCluster, name: str) -> bool:
    written = lab.exec("a", "sh", "-c", f"echo {name} > {lab.path}/{name}")
    assert written.returncode == 0, written.stderr
    return (lab.copy("b") / name).exists()


def test_garbage_and_another_version_are_refused_while_replication_goes_on(
    quick_lab: LabCluster,
) -> None:
    garbage = quick_lab.exec("a", *_fake_primary(quick_lab, "garbage"))
    assert "closed after" in garbage.stdout
    version = quick_lab.exec("a", *_fake_primary(quick_lab, "version"))
    assert "peer said:" in version.stdout and "version" in version.stdout, version.stdout
    log = quick_lab.log("b")
    assert log.count("refused a peer:") == 2, log
    assert _replicates(quick_lab, "still-mirrored")


def test_a_peer_stalling_mid_frame_is_dropped_and_holds_nothing_up(
    quick_lab: LabCluster,
) -> None:
    staller = quick_lab.popen(
        "a", *_fake_primary(quick_lab, "stall"), stdout=subprocess.PIPE, text=True
    )
    try:
        time.sleep(0.3)
        assert _replicates(quick_lab, "during-the-stall")
        out, _ = staller.communicate(timeout=30)
    finally:
        stop_group(staller)
    closed_after = float(out.split("closed after ")[1].split()[0])
    assert TIMEOUT - 0.5 <= closed_after <= TIMEOUT + 3, out
    assert f"did not complete the handshake within {TIMEOUT:g} s" in quick_lab.log("b")


def test_an_authenticated_peer_stalling_mid_frame_never_gets_half_a_mutation_applied(
    quick_lab: LabCluster,
) -> None:
    # a peer holding the cluster secret is a member: it replaces a session gone silent
    staller = quick_lab.popen(
        "a", *_fake_primary(quick_lab, "auth-stall"), stdout=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: "replaces the previous one" in quick_lab.log("b"), 20, "the takeover")
        time.sleep(0.5)
        assert not (quick_lab.copy("b") / "stalled").exists()
        # the displaced primary notices and goes on alone rather than hanging its writers
        written = quick_lab.exec("a", "sh", "-c", f"echo x > {quick_lab.path}/after")
        assert written.returncode == 0
        wait_for(lambda: "going on alone" in quick_lab.log("a"), 20, "the primary alone")
    finally:
        stop_group(staller)


@pytest.fixture
def pair(make_pair: Callable[[float], Pair]) -> Pair:
    return make_pair(TIMEOUT)


@pytest.mark.parametrize(
    ("mode", "reason"),
    [
        ("listen-version", "refused:"),
        ("listen-stall", "did not complete the handshake"),
        # the secondary's PEER_STATE ends the handshake: a peer silent after its proof stalls it
        ("listen-auth-stall", "did not complete the handshake"),
    ],
)
def test_a_bad_secondary_never_hangs_the_primary(pair: Pair, mode: str, reason: str) -> None:
    fake = fake_secondary(pair, mode)
    try:
        primary = pair.start_primary(expect_peer=False)
        started = time.monotonic()
        (pair.a / "written").write_text("the application is not held up for long\n")
        elapsed = time.monotonic() - started
        assert elapsed < TIMEOUT * 2 + 2, f"a write took {elapsed:.1f} s"
        wait_for(lambda: "retrying every" in primary.log(), 20, "the primary alone")
        assert reason in primary.log(), primary.log()
        assert (pair.a / "written").read_text().startswith("the application")
    finally:
        fake.kill()
        fake.communicate()


def test_a_secondary_answering_without_end_cannot_take_the_primary_s_memory(pair: Pair) -> None:
    """A peer that proved the secret but answers the resync's first query with parts that
    never end: past 512 MiB the primary calls it a protocol violation, drops the answer and
    goes on alone; the application's writes never stop."""
    fake = fake_secondary(pair, "listen-huge-answer")
    try:
        primary = pair.start_primary(expect_peer=False)
        assert primary.process is not None
        status = Path(f"/proc/{primary.process.pid}/status")
        peak = 0
        deadline = time.monotonic() + 120
        while "more than 512 MiB (protocol violation)" not in primary.log():
            assert time.monotonic() < deadline, primary.log()[-2000:]
            resident = next(line for line in status.read_text().splitlines() if "VmRSS" in line)
            peak = max(peak, int(resident.split()[1]) << 10)
            time.sleep(0.05)
        assert peak < 1 << 30, f"the primary grew to {peak >> 20} MiB"
        (pair.a / "written").write_text("alone, still acknowledged\n")
        assert primary.alive()
    finally:
        fake.kill()
        out, _ = fake.communicate()
    assert "answering query" in out, out
