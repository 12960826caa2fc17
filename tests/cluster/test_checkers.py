"""Every checker against the real thing, healthy and failing: a named process, a user's script,
a listening TCP port, a pinged address, a network interface (a veth pair in a namespace brought
down and up), and the split-brain witness probe (one witness answering is enough)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import trio

from tandem.engine.failover.checkers import Checker, run_check
from tandem.heartbeat.probes import Witness, witness_reachable

pytestmark = pytest.mark.root


def check(checker: Checker) -> tuple[bool, str]:
    probe = trio.run(partial(run_check, checker))
    return probe.ok, probe.detail


def test_process_checker(tmp_path: Path) -> None:
    name = f"tandem-app-{os.getpid()}"
    assert check(Checker("process", name)) == (False, f"no process named {name} runs")
    app = subprocess.Popen(["bash", "-c", f"exec -a {name} sleep 30"])
    try:
        # bash takes its new name only once it has started (flaky when checked at once)
        deadline = time.monotonic() + 10
        ok, detail = check(Checker("process", name))
        while not ok and time.monotonic() < deadline:
            time.sleep(0.05)
            ok, detail = check(Checker("process", name))
        assert ok and str(app.pid) in detail
    finally:
        app.kill()
        app.wait()
    assert not check(Checker("process", name))[0]


def test_custom_checker(tmp_path: Path) -> None:
    script = tmp_path / "health"
    script.write_text("#!/bin/sh\necho 'queue length 3'\nexit 0\n")
    script.chmod(0o755)
    assert check(Checker("custom", str(script))) == (True, f"{script} says healthy: queue length 3")
    script.write_text("#!/bin/sh\necho 'database not answering' >&2\nexit 2\n")
    assert check(Checker("custom", str(script))) == (
        False,
        f"{script} exited 2: database not answering",
    )
    script.write_text("#!/bin/sh\nsleep 30\n")
    ok, detail = check(Checker("custom", str(script), timeout=0.5))
    assert not ok and "did not answer within 0.5 s" in detail
    assert "missing or not executable" in check(Checker("custom", str(tmp_path / "none")))[1]


def test_tcp_and_ping_checkers() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert check(Checker("tcp", "127.0.0.1", port)) == (
            True,
            f"127.0.0.1:{port} accepts connections",
        )
    ok, detail = check(Checker("tcp", "127.0.0.1", port))
    assert not ok and "refuses" in detail
    assert check(Checker("ping", "127.0.0.1"))[0]
    ok, detail = check(Checker("ping", "198.18.99.99", timeout=1))  # not routed from here
    assert not ok and "does not answer ping" in detail


def test_interface_checker_and_witness_across_namespaces() -> None:
    netns, router = f"chk{os.getpid() % 100000}", f"chk{os.getpid() % 100000}-r"
    for name in (netns, router):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        here, there = ["ip", "-n", netns], ["ip", "-n", router]
        subprocess.run(
            [*here, "link", "add", "eth0", "type", "veth", "peer", "name", "up0"], check=True
        )
        subprocess.run([*here, "link", "set", "up0", "netns", router], check=True)
        subprocess.run([*here, "addr", "add", "198.18.60.1/24", "dev", "eth0"], check=True)
        subprocess.run([*there, "addr", "add", "198.18.60.2/24", "dev", "up0"], check=True)
        script = (
            "import sys, trio\n"
            "from tandem.engine.failover.checkers import interface_up\n"
            "from tandem.heartbeat.probes import Witness, witness_reachable\n"
            "witnesses = [Witness('198.18.60.9'), Witness('198.18.60.2')]\n"
            "async def main():\n"
            "    print((await interface_up('eth0')).detail)\n"
            "    ok, why = await witness_reachable(witnesses, 1)\n"
            "    print(ok, why)\n"
            "trio.run(main)\n"
        )

        def probe() -> list[str]:
            done = subprocess.run(
                ["ip", "netns", "exec", netns, sys.executable, "-c", script],
                capture_output=True,
                text=True,
                check=True,
            )
            return done.stdout.splitlines()

        detail, witness = probe()
        assert detail == "interface eth0 is down" and witness.startswith("False")
        subprocess.run([*here, "link", "set", "eth0", "up"], check=True)
        assert probe()[0] == "interface eth0 has no carrier (cable or peer down)"
        subprocess.run([*there, "link", "set", "up0", "up"], check=True)
        detail, witness = probe()
        assert detail == "interface eth0 is up"
        assert witness == "True 198.18.60.2 answers ping"  # one witness answering is enough
        subprocess.run([*there, "link", "set", "up0", "down"], check=True)
        ok, why = probe()[1].split(" ", 1)
        assert ok == "False" and "198.18.60.9" in why and "198.18.60.2" in why
    finally:
        for name in (netns, router):
            subprocess.run(["ip", "netns", "delete", name], check=False)


def test_no_witness_is_a_configuration_error() -> None:
    with pytest.raises(ValueError):
        trio.run(witness_reachable, [])
    assert Witness("198.18.0.1", 80).port == 80
