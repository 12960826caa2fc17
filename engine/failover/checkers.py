"""Checkers: is the application (and what it needs) healthy on this node? Each answers with a
`Probe` (ok, and a detail for the module log); what to do about a failure (restart the
application, fail over, stop) is the state machine's (`AppFailed`), not theirs.

- process: a process with this name (its command, or its first argument's base name) runs;
- custom: a user's script exits 0;
- tcp: something accepts connections on address:port;
- ping: an address answers ICMP echo;
- interface: a network interface is up and has a carrier.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tandem.engine.config.modules import CheckerConfig
from tandem.heartbeat.probes import Probe, ping, tcp


async def process_running(name: str) -> Probe:
    found = await trio.to_thread.run_sync(_processes_named, name)
    if found:
        return Probe(True, f"process {name} runs (pid {found[0]})")
    return Probe(False, f"no process named {name} runs")


def _processes_named(name: str) -> list[int]:
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            comm = Path(entry.path, "comm").read_text().strip()
            argv0 = Path(entry.path, "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue  # ended while we looked
        if name in (comm, os.path.basename(argv0.decode(errors="replace"))):
            found.append(int(entry.name))
    return sorted(found)


async def custom(path: str, timeout: float = 10.0) -> Probe:
    if not os.access(path, os.X_OK):
        return Probe(False, f"checker script {path} is missing or not executable")
    with trio.move_on_after(timeout):
        done = await trio.run_process(
            [path], capture_stdout=True, capture_stderr=True, check=False, start_new_session=True
        )
        said = (done.stdout + done.stderr).decode(errors="replace").strip().splitlines()
        detail = f": {said[-1]}" if said else ""
        if done.returncode == 0:
            return Probe(True, f"{path} says healthy{detail}")
        return Probe(False, f"{path} exited {done.returncode}{detail}")
    return Probe(False, f"{path} did not answer within {timeout:g} s")


async def interface_up(name: str) -> Probe:
    base = Path("/sys/class/net", name)
    try:
        flags = int((base / "flags").read_text(), 16)
    except FileNotFoundError:
        return Probe(False, f"no network interface {name}")
    try:
        carrier = (base / "carrier").read_text().strip() == "1"
    except OSError:  # reading the carrier of a down interface fails with EINVAL
        carrier = False
    if not flags & 0x1:  # IFF_UP
        return Probe(False, f"interface {name} is down")
    if not carrier:
        return Probe(False, f"interface {name} has no carrier (cable or peer down)")
    return Probe(True, f"interface {name} is up")


# One configured check (a module file's [[checker]] table): kind, target, port, interval, timeout
Checker = CheckerConfig


async def run_check(checker: Checker) -> Probe:
    match checker.kind:
        case "process":
            return await process_running(checker.target)
        case "custom":
            return await custom(checker.target, checker.timeout)
        case "tcp":
            assert checker.port is not None
            return await tcp(checker.target, checker.port, checker.timeout)
        case "ping":
            return await ping(checker.target, checker.timeout)
        case "interface":
            return await interface_up(checker.target)
    raise ValueError(f"unknown checker kind {checker.kind!r}")


async def watch_checker(
    checker: Checker,
    serving: Callable[[], bool],
    still_serving: Callable[[], bool],
    failed: Callable[[str], Awaitable[None]],
) -> None:
    """Run ``checker`` every interval while this node serves; ``failed`` hears a failure seen
    while the node still serves (a step down begun meanwhile stops the application itself)."""
    while True:
        await trio.sleep(checker.interval)
        if not serving():
            continue
        probe = await run_check(checker)
        if probe.ok or not still_serving():
            continue
        await failed(f"checker {checker.kind} {checker.target}: {probe.detail}")
