"""Bad input at the command line is one clear line and starts nothing half-way: a port another
process holds, a control socket in a directory that does not exist, a reader that goes away."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tandem.engine.config.paths import module_log
from tandem.fsdriver.mount import mounts_at

CLI = [sys.executable, "-m", "tandem.engine.cli"]


def _secret(tmp_path: Path) -> Path:
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123")
    secret.chmod(0o600)
    return secret


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def test_receive_on_a_busy_port_is_one_line_and_mounts_nothing(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = _run(
            "receive", str(copy), "--listen", f"127.0.0.1:{port}",
            "--secret-file", str(_secret(tmp_path)),
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"tandem: error: cannot listen on 127.0.0.1:{port}: Address already in use"
    ]
    assert mounts_at(str(copy)) == []


def test_a_control_socket_nowhere_is_refused_before_mounting(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    done = _run(
        "mount", str(data), "--replicate-to", "127.0.0.1:9",
        "--secret-file", str(_secret(tmp_path)), "--control", "/nonexistent/x.sock",
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "tandem: error: --control /nonexistent/x.sock: no directory /nonexistent to create "
        "the socket in"
    ]
    assert mounts_at(str(data)) == []


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    state = tmp_path / "state" / "modules"
    for name in ("alpha", "beta", "gamma"):
        (state / name).mkdir(parents=True)
    read, write = os.pipe()
    os.close(read)  # `| head -0`: gone before the first line
    try:
        done = subprocess.run(
            [*CLI, "state", "--state-dir", str(tmp_path / "state")],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write)
    assert done.stderr == ""
    assert done.returncode in (0, 1)  # 1: the modules found did not answer (none runs)


def test_logs_prints_the_last_lines_and_follows_through_a_rotation(tmp_path: Path) -> None:
    log = Path(module_log(str(tmp_path), "web"))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(f"line {n}\n" for n in range(10)))
    where = ("--state-dir", str(tmp_path))
    assert _run("logs", "web", "-n", "2", *where).stdout == "line 8\nline 9\n"
    assert _run("logs", "web", "-n", "0", *where).stdout.count("\n") == 10
    refused = _run("logs", "web", "-n", "-3", *where)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.splitlines()[-1].endswith("'-3' is not a number of lines (0 or more)")
    follower = subprocess.Popen(
        [*CLI, "logs", "web", "-n", "1", "-f", *where],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # a suite started in the background inherits SIGINT ignored, and Python keeps it so:
        # Ctrl-C must reach the follower as it would from a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline() == "line 9\n"
        with log.open("a") as more:
            more.write("line 10\n")
        assert follower.stdout.readline() == "line 10\n"
        log.rename(log.with_suffix(".1"))  # what a rotation does
        log.write_text("fresh\n")
        assert follower.stdout.readline() == "fresh\n"
    finally:
        follower.send_signal(signal.SIGINT)  # Ctrl-C: one line, no traceback
        _, err = follower.communicate(timeout=20)
    assert "Traceback" not in err and "interrupted" in err
