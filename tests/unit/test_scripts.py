"""User scripts run for real: environment, output in the application log, exit codes, a timeout
answered by SIGTERM then SIGKILL (children included), never two at once, a missing script is
nothing to run, a non-executable one is an error."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import trio

from tandem.engine.failover.scripts import ScriptError, ScriptRunner


def script(directory: Path, name: str, body: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def runner(tmp_path: Path, **kw: float) -> ScriptRunner:
    return ScriptRunner(tmp_path, tmp_path / "app.log", "web", "alpha", **kw)


def test_environment_output_and_exit_code(tmp_path: Path) -> None:
    script(
        tmp_path,
        "start_prim",
        'echo "starting $TANDEM_MODULE on $TANDEM_NODE ($TANDEM_REASON)"\nexit 3\n',
    )
    result = trio.run(lambda: runner(tmp_path).run("start_prim", reason="failover"))
    assert result.ran and result.exit_code == 3 and not result.ok
    log = (tmp_path / "app.log").read_text()
    assert "web start_prim: started" in log
    assert "starting web on alpha (failover)" in log
    assert "web start_prim: exit code 3" in log


def test_a_missing_script_is_nothing_to_run_a_bad_one_an_error(tmp_path: Path) -> None:
    result = trio.run(lambda: runner(tmp_path).run("stop_prim"))
    assert not result.ran and result.ok
    (tmp_path / "stop_prim").write_text("#!/bin/sh\n")
    with pytest.raises(ScriptError, match="not executable"):
        trio.run(lambda: runner(tmp_path).run("stop_prim"))
    with pytest.raises(ScriptError, match="unknown script"):
        trio.run(lambda: runner(tmp_path).run("reboot"))


def test_a_script_past_its_timeout_gets_term_then_kill_with_its_children(tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    script(
        tmp_path,
        "start_prim",
        f"trap '' TERM\nsleep 60 &\necho $! > {pids}\nwhile true; do sleep 0.1; done\n",
    )
    started = time.monotonic()
    result = trio.run(lambda: runner(tmp_path, timeout=0.5, kill_grace=0.5).run("start_prim"))
    assert result.timed_out and result.killed and not result.ok
    assert time.monotonic() - started < 5
    child = int(pids.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{child}") and time.monotonic() < deadline:
        time.sleep(0.05)
    status = Path(f"/proc/{child}/stat")
    assert not status.exists() or status.read_text().split()[2] == "Z", "a child survived"
    assert "timed out after" in (tmp_path / "app.log").read_text()

    script(
        tmp_path, "stop_prim", "trap 'echo got TERM; exit 0' TERM\nwhile true; do sleep 0.1; done\n"
    )
    polite = trio.run(lambda: runner(tmp_path, timeout=0.5, kill_grace=5).run("stop_prim"))
    assert polite.timed_out and not polite.killed


def test_never_two_at_once_and_a_background_application_survives(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    for name in ("start_prim", "stop_prim"):
        script(tmp_path, name, f"echo begin >> {marks}\nsleep 0.3\necho end >> {marks}\n")
    app_pid = tmp_path / "app.pid"
    script(tmp_path, "start_both", f"sleep 30 &\necho $! > {app_pid}\necho app started\n")
    run = runner(tmp_path)

    async def both() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run.run, "start_prim")
            nursery.start_soon(run.run, "stop_prim")
        result = await run.run("start_both")
        assert result.ok

    trio.run(both)
    assert marks.read_text().split() == ["begin", "end", "begin", "end"]
    pid = int(app_pid.read_text())
    try:
        assert os.path.exists(f"/proc/{pid}"), "the application a script started was killed"
    finally:
        os.kill(pid, 9)
