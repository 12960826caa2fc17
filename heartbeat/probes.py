"""Reachability probes (ping, TCP connect), and the split-brain witness check built on them.

When every heartbeat network is silent, a node cannot tell "the peer died" from "I am cut off".
It asks a witness (a router, a gateway: something both nodes normally reach): reaching any
witness means this node is on the working side; reaching none means it may be the isolated one
and must not serve. No third Tandem node is needed.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import trio

PING = shutil.which("ping") or "/usr/bin/ping"


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str


async def ping(address: str, timeout: float = 1.0) -> Probe:
    """One ICMP echo (the system's ping: it holds the raw-socket privilege)."""
    # ping's own -W counts whole seconds; the cancel scope holds the (sub-second) timeout
    wait = max(1, round(timeout + 0.5))
    command = [PING, "-n", "-q", "-c", "1", "-W", str(wait), address]
    try:
        with trio.move_on_after(timeout):
            done = await trio.run_process(
                command, capture_stdout=True, capture_stderr=True, check=False
            )
            if done.returncode == 0:
                return Probe(True, f"{address} answers ping")
            reason = (done.stderr.decode(errors="replace").strip().splitlines() or [""])[-1]
            return Probe(False, f"{address} does not answer ping{': ' + reason if reason else ''}")
    except FileNotFoundError:
        return Probe(False, f"cannot ping {address}: no ping command ({PING})")
    return Probe(False, f"{address} does not answer ping within {timeout:g} s")


async def tcp(address: str, port: int, timeout: float = 1.0) -> Probe:
    """Whether something accepts a TCP connection on ``address:port``."""
    with trio.move_on_after(timeout):
        try:
            stream = await trio.open_tcp_stream(address, port)
        except OSError as exc:
            return Probe(False, f"{address}:{port} refuses: {exc.strerror or exc}")
        await stream.aclose()
        return Probe(True, f"{address}:{port} accepts connections")
    return Probe(False, f"{address}:{port} does not answer within {timeout:g} s")


@dataclass(frozen=True)
class Witness:
    """``address`` probed by ping, or by TCP when ``port`` is given."""

    address: str
    port: int | None = None

    async def probe(self, timeout: float) -> Probe:
        if self.port is None:
            return await ping(self.address, timeout)
        return await tcp(self.address, self.port, timeout)


async def witness_reachable(witnesses: list[Witness], timeout: float = 1.0) -> tuple[bool, str]:
    """Any witness answering is enough (all are asked at once)."""
    if not witnesses:
        raise ValueError("no witness configured")
    results: list[Probe] = []

    async def ask(witness: Witness) -> None:
        results.append(await witness.probe(timeout))

    async with trio.open_nursery() as nursery:
        for witness in witnesses:
            nursery.start_soon(ask, witness)
    answered = [r for r in results if r.ok]
    if answered:
        return True, answered[0].detail
    return False, "; ".join(r.detail for r in results)
