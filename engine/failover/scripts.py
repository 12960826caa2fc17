"""The user's scripts (``start_prim``, ``stop_prim``, ``start_both``, ``stop_both``): run with
the module and the transition in their environment, never two at once for a module, within a
timeout after which they get SIGTERM and then, after a grace period, SIGKILL (the whole process
group: a script's children go with it). What they print goes straight to the module's
application log, between a line saying the script started and one saying how it ended. (A file,
not a pipe: an application a script leaves running in the background may keep printing; a pipe
would have to be read forever, or it would die of SIGPIPE.)

A script that is not there is not an error (the module simply has nothing to start); one that is
there but cannot be executed is.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from tandem.engine.config.modules import SCRIPT_NAMES

DEFAULT_TIMEOUT = 120.0
KILL_GRACE = 5.0


@dataclass(frozen=True)
class ScriptResult:
    name: str
    ran: bool  # False: no such script
    exit_code: int | None
    timed_out: bool = False
    killed: bool = False  # did not end after SIGTERM
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.ran or (self.exit_code == 0 and not self.timed_out)

    def describe(self) -> str:
        if not self.ran:
            return f"{self.name}: no script, nothing to run"
        if self.timed_out:
            how = "killed" if self.killed else "stopped by SIGTERM"
            return f"{self.name}: timed out after {self.seconds:.1f} s ({how})"
        return f"{self.name}: exit code {self.exit_code} in {self.seconds:.1f} s"


class ScriptError(Exception):
    pass


class ScriptRunner:
    def __init__(
        self,
        scripts_dir: str | os.PathLike[str],
        app_log: str | os.PathLike[str],
        module: str,
        node: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        kill_grace: float = KILL_GRACE,
    ) -> None:
        self._dir = Path(scripts_dir)
        self._log = Path(app_log)
        self._module = module
        self._node = node
        self._timeout = timeout
        self._grace = kill_grace
        self._one_at_a_time = trio.Lock()

    async def run(self, name: str, **environment: str) -> ScriptResult:
        """Run script ``name`` (waiting for any other of this module's scripts to end first)."""
        if name not in SCRIPT_NAMES:
            raise ScriptError(f"unknown script {name!r} (known: {', '.join(SCRIPT_NAMES)})")
        path = self._dir / name
        if not path.exists():
            return ScriptResult(name, ran=False, exit_code=None)
        if not os.access(path, os.X_OK):
            raise ScriptError(f"{path} is not executable (chmod +x {path})")
        async with self._one_at_a_time:
            return await self._run(name, path, environment)

    async def _run(self, name: str, path: Path, extra: dict[str, str]) -> ScriptResult:
        env = {
            **os.environ,
            "TANDEM_MODULE": self._module,
            "TANDEM_NODE": self._node,
            "TANDEM_SCRIPT": name,
            **{f"TANDEM_{key.upper()}": value for key, value in extra.items()},
        }
        started = time.monotonic()
        self._note(name, "started")
        with open(self._log, "ab") as output, open(os.devnull, "rb") as nothing:
            process = await trio.lowlevel.open_process(
                [str(path)],
                stdin=nothing,
                stdout=output,
                stderr=output,
                env=env,
                cwd=str(self._dir),
                start_new_session=True,  # its own process group: TERM/KILL reach its children
            )
        timed_out = killed = False
        with trio.move_on_after(self._timeout) as waited:
            await process.wait()
        if waited.cancelled_caught:
            timed_out = True
            _signal_group(process.pid, signal.SIGTERM)
            with trio.move_on_after(self._grace) as grace:
                await process.wait()
            if grace.cancelled_caught:
                killed = True
                _signal_group(process.pid, signal.SIGKILL)
                await process.wait()
        result = ScriptResult(
            name,
            ran=True,
            exit_code=process.returncode,
            timed_out=timed_out,
            killed=killed,
            seconds=time.monotonic() - started,
        )
        self._note(name, result.describe().removeprefix(f"{name}: "))
        return result

    def _note(self, name: str, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with open(self._log, "a", encoding="utf-8") as log:
            log.write(f"{stamp} {self._module} {name}: {text}\n")


def _signal_group(pid: int, signum: int) -> None:
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass
