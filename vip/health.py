"""Cloud mode: instead of moving an address (clouds do not let a VM take another's IP), each
node answers an HTTP health probe, and the cloud load balancer sends clients to the node that
answers 200. Here: ``GET /`` (or ``/health``, or ``/MODULE``) → 200 on the node serving the
module, 503 elsewhere, with one line saying why. Nothing else is accepted; the server reads at
most one small request per connection and never blocks the node on a slow prober.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

MAX_REQUEST = 8192
READ_TIMEOUT = 5.0

# module name -> (serving?, why): asked at every probe, so the answer is always current
Serving = Callable[[str], tuple[bool, str]]


async def serve_health(
    host: str,
    port: int,
    module: str,
    serving: Serving,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)

    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            try:
                await _answer(stream, module, serving)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    await trio.serve_listeners(answer, listeners, task_status=task_status)


async def _answer(stream: trio.SocketStream, module: str, serving: Serving) -> None:
    request = b""
    with trio.move_on_after(READ_TIMEOUT):
        while b"\r\n\r\n" not in request and b"\n\n" not in request:
            chunk = await stream.receive_some(1024)
            if not chunk:
                break
            request += chunk
            if len(request) > MAX_REQUEST:
                await _reply(stream, 431, "request too large")
                return
    line = request.split(b"\n", 1)[0].decode("latin-1").strip()
    parts = line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        await _reply(stream, 400, "not an HTTP request")
        return
    method, path = parts[0], parts[1].split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        await _reply(stream, 405, "only GET and HEAD", head=False)
        return
    if path not in ("/", "/health", f"/{module}"):
        await _reply(stream, 404, f"no such probe: try / or /{module}", head=method == "HEAD")
        return
    ok, why = serving(module)
    await _reply(stream, 200 if ok else 503, why, head=method == "HEAD")


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


async def _reply(stream: trio.SocketStream, status: int, text: str, head: bool = False) -> None:
    body = (text + "\n").encode()
    header = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    await stream.send_all(header if head else header + body)
