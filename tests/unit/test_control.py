"""The control socket: bad requests get a clear answer and the server stays up; an absent
process, a long state directory path and a failing command are each told apart."""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from tandem.engine.control.channel import ControlError, ask, serve_control


async def _echo(request: dict[str, Any]) -> dict[str, Any]:
    return {"echo": request.get("value")}


async def _broken(request: dict[str, Any]) -> dict[str, Any]:
    raise RuntimeError("a bug")


async def _refusing(request: dict[str, Any]) -> dict[str, Any]:
    raise ControlError("not now: the copies are not in sync")


def _raw(path: str, payload: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path)
        sock.sendall(payload)
        return sock.recv(65536)


def _with_server(path: str, client: Any) -> Any:
    handlers = {"echo": _echo, "broken": _broken, "refusing": _refusing}
    result: list[Any] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_control, path, handlers)
            result.append(await trio.to_thread.run_sync(client))
            nursery.cancel_scope.cancel()

    trio.run(main)
    return result[0]


def test_commands_and_their_failures(tmp_path: Path) -> None:
    path = str(tmp_path / "control.sock")

    def client() -> list[Any]:
        mode = stat.S_IMODE(os.stat(path).st_mode)
        answers: list[Any] = [mode, ask(path, "echo", value=3)]
        for command in ("broken", "refusing", "nosuch"):
            try:
                ask(path, command)
            except ControlError as exc:
                answers.append(str(exc))
        answers.append(_raw(path, b"not json\n"))
        answers.append(_raw(path, b'{"no": "command"}\n'))
        answers.append(ask(path, "echo", value="still up"))
        return answers

    mode, echoed, broken, refusing, unknown, garbage, shapeless, after = _with_server(path, client)
    assert mode == 0o600
    assert echoed == {"echo": 3}
    assert broken == "internal error: RuntimeError('a bug')"
    assert refusing == "not now: the copies are not in sync"
    assert unknown == "unknown command 'nosuch' (known: broken, echo, refusing)"
    assert b"the request is not JSON" in garbage
    assert b'the request needs a \\"command\\"' in shapeless
    assert after == {"echo": "still up"}
    assert not os.path.exists(path), "the socket is removed when the server stops"


def test_a_long_state_directory_path_still_works(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = str(deep / "control.sock")
    assert len(path) > 108
    assert _with_server(path, lambda: ask(path, "echo", value=1)) == {"echo": 1}


def test_nothing_running_is_said_plainly(tmp_path: Path) -> None:
    with pytest.raises(ControlError, match="nothing is running there"):
        ask(str(tmp_path / "control.sock"), "status")
    (tmp_path / "stale.sock").touch()  # a file left behind, nobody listening
    with pytest.raises(ControlError, match="nothing is running there"):
        ask(str(tmp_path / "stale.sock"), "status")
