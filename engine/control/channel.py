"""Control sockets: how `tandem state`, `tandem verify` and `tandem resync` reach the process that
owns a replication stream (the mount child of a primary, the node process of a secondary).

One Unix stream socket per stream, ``<state-dir>/<module>/<index>/control.sock``, mode 0600: its
file permissions are the authentication (root only). The protocol is one JSON object per line:
a request ``{"command": NAME, ...}`` and one answer, ``{"ok": true, ...}`` or
``{"ok": false, "error": TEXT}``. An answer may take as long as the command does (a verify).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping
from typing import Any

import trio

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
MAX_REQUEST = 1 << 16
REQUEST_TIMEOUT = 10.0

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class ControlError(Exception):
    """The stream's process could not be asked, or refused (worded for the operator)."""


async def serve_control(
    path: str,
    handlers: Mapping[str, Handler],
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # left by a process that was killed: nobody listens there any more
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        with _addressable(path) as address:
            await listener.bind(address)
    finally:
        os.umask(old_umask)
    listener.listen(16)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                client, _ = await listener.accept()
                nursery.start_soon(_answer, trio.SocketStream(client), handlers)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.contextmanager
def _addressable(path: str) -> Iterator[str]:
    """``path`` as a socket address: Unix socket addresses hold 107 bytes, deep state
    directories (a lab under a test's temporary directory) do not fit; their directory's
    descriptor, seen through /proc, does."""
    if len(os.fsencode(path)) < 100:
        yield path
        return
    directory, name = os.path.split(path)
    fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{name}"
    finally:
        os.close(fd)


async def _answer(stream: trio.SocketStream, handlers: Mapping[str, Handler]) -> None:
    request = b""
    async with stream:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                request = await _read_line(stream)
            if not request:
                return  # nothing asked in time (or the asker left): don't hold a task for it
            answer = await _dispatch(request, handlers)
            await stream.send_all(json.dumps(answer).encode() + b"\n")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the asker went away: nothing to tell


async def _read_line(stream: trio.SocketStream) -> bytes:
    data = b""
    while b"\n" not in data:
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            break
    return data.partition(b"\n")[0]


async def _dispatch(request: bytes, handlers: Mapping[str, Handler]) -> dict[str, Any]:
    try:
        message = json.loads(request)
    except ValueError:
        return {"ok": False, "error": "the request is not JSON"}
    if not isinstance(message, dict) or not isinstance(message.get("command"), str):
        return {"ok": False, "error": 'the request needs a "command"'}
    handler = handlers.get(message["command"])
    if handler is None:
        known = ", ".join(sorted(handlers))
        return {"ok": False, "error": f"unknown command {message['command']!r} (known: {known})"}
    try:
        return {"ok": True, **await handler(message)}
    except ControlError as exc:
        return {"ok": False, "error": str(exc)}
    except Exception as exc:  # a bug in one command must not take the stream's process down
        log.exception("control command %s failed", message["command"])
        return {"ok": False, "error": f"internal error: {exc!r}"}


def ask(path: str, command: str, timeout: float | None = 10.0, **arguments: Any) -> dict[str, Any]:
    """Send one command and return the answer's fields; raises ControlError."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            with _addressable(path) as address:
                sock.connect(address)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(f"nothing is running there ({path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path} (run as root)") from None
        try:
            sock.sendall(json.dumps({"command": command, **arguments}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise ControlError(f"no answer from {path} within {timeout:g} s") from None
        except OSError as exc:
            raise ControlError(f"{path}: {exc.strerror or exc}") from None
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path} answered something that is not JSON") from None
    if not isinstance(answer, dict) or not answer.get("ok"):
        error = answer.get("error") if isinstance(answer, dict) else None
        raise ControlError(str(error or "the command failed"))
    del answer["ok"]
    return answer
