"""The document `tandem state --json` prints and ``GET /api/v1/state`` answers: one schema,
gathered from the control sockets of this node's modules and streams.

Fields are added, never renamed or removed; ``version`` changes if that ever must happen
(docs/operate.md documents the shape).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tandem.engine.config.modules import check_name
from tandem.engine.config.paths import control_socket, module_socket
from tandem.engine.control.channel import ControlError, ask

STATE_VERSION = 1


def stream_indexes(state_dir: str, module: str) -> list[int]:
    found = Path(state_dir, "modules", module)
    try:
        return sorted(int(entry.name) for entry in found.iterdir() if entry.name.isdigit())
    except FileNotFoundError:
        return []


def known_modules(state_dir: str, wanted: list[str]) -> list[str]:
    for name in wanted:
        check_name(name)
    if wanted:
        return wanted
    try:
        return sorted(entry.name for entry in Path(state_dir, "modules").iterdir())
    except FileNotFoundError:
        return []


def stream_states(state_dir: str, module: str) -> list[dict[str, Any]]:
    streams = []
    for index in stream_indexes(state_dir, module):
        try:
            status = ask(control_socket(state_dir, module, index), "status")
            status["running"] = True
        except ControlError as exc:
            status = {"running": False, "reason": str(exc)}
        streams.append({"index": index, **status})
    return streams


def failover_state(state_dir: str, module: str) -> dict[str, Any] | None:
    """The failover state, for a module the node fails over (None for a fixed role)."""
    path = module_socket(state_dir, module)
    if not Path(path).exists():
        return None
    try:
        return {"running": True, **ask(path, "state")}
    except ControlError as exc:
        return {"running": False, "reason": str(exc)}


def node_report(state_dir: str, wanted: list[str]) -> tuple[dict[str, Any], bool]:
    """The state document, and whether every module found answered completely."""
    modules = known_modules(state_dir, wanted)
    report: dict[str, Any] = {"version": STATE_VERSION, "state_dir": state_dir, "modules": {}}
    complete = bool(modules)
    for module in modules:
        failover = failover_state(state_dir, module)
        streams = stream_states(state_dir, module)
        if failover is None or failover["state"] in ("PRIM", "ALONE", "SECOND"):
            complete = complete and bool(streams) and all(s["running"] for s in streams)
        else:
            streams = [s for s in streams if s["running"]]  # no copy served or received: none
        complete = complete and (failover is None or failover["running"])
        report["modules"][module] = {"failover": failover, "streams": streams}
    return report, complete
