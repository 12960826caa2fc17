"""The HTTP API every node serves (``/api/v1/``), ``/metrics``, and the web console's files.

Every answer but the health check and the console's static files (which hold no data) needs
credentials: a session cookie with its CSRF token on every command, a script's bearer token, or
the signature of the peer node (`tandem.engine.api.forward`). ``admin`` drives modules and takes
snapshots; ``read-only`` sees. The document `GET /api/v1/state` answers is the one
`tandem state --json` prints (`tandem.engine.api.report`); a command given to either node is
carried out by the node that must act (a swap by the serving node; ``node`` names another).
"""

from __future__ import annotations

import base64
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from tandem.engine.api import forward, logview, metrics, snapshot
from tandem.engine.api.openapi import document
from tandem.engine.api.report import node_report, stream_indexes
from tandem.engine.api.sessions import Sessions, Throttle
from tandem.engine.api.users import Identity, Users
from tandem.engine.config.modules import ConfigError, ModuleConfig, check_name
from tandem.engine.config.paths import app_log, journal_dir, module_log, module_socket
from tandem.engine.control.channel import ControlError, ask

log = logging.getLogger(__name__)

COOKIE = "tandem_session"
CSRF_HEADER = "X-CSRF-Token"
COMMANDS = ("start", "stop", "restart", "swap", "prim", "second")
SERVING = ("PRIM", "ALONE")
MAX_BODY = 64 << 10
MAX_WAIT = 25.0  # seconds a following log request waits for more
CONSOLE = Path(__file__).parent / "console"
PEER = Identity("peer node", "admin")


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class ApiContext:
    node: str
    state_dir: str
    config_dir: str
    modules: dict[str, ModuleConfig]
    held_secrets: Callable[[], tuple[bytes, ...]]  # signing secret first
    port: int
    tls: bool = True
    users: Users = field(init=False)
    sessions: Sessions = field(default_factory=Sessions)
    throttle: Throttle = field(default_factory=Throttle)
    forwards: forward.ForwardCheck = field(default_factory=forward.ForwardCheck)
    clock: Callable[[], float] = time.monotonic
    # argon2 takes ~64 MiB and tens of ms a check: a login flood may not take the memory
    password_checks: anyio.CapacityLimiter = field(default_factory=lambda: anyio.CapacityLimiter(2))

    def __post_init__(self) -> None:
        from tandem.engine.api.users import users_file

        self.users = Users(users_file(self.config_dir))

    def peers(self) -> dict[str, str]:
        """Every other node of this node's modules: name -> address."""
        found: dict[str, str] = {}
        for module in self.modules.values():
            for name, address in module.nodes.items():
                if name != self.node:
                    found.setdefault(name, address)
        return found


@dataclass
class Caller:
    identity: Identity
    forwarded_key: bytes | None = None  # the answer is sealed with it
    forward_header: str = ""


Handler = Callable[[ApiContext, Request, Caller, bytes], Awaitable[Any]]


def _body_json(body: bytes) -> dict[str, Any]:
    if not body:
        return {}
    try:
        found = json.loads(body)
    except ValueError:
        raise ApiError(400, "the body is not JSON") from None
    if not isinstance(found, dict):
        raise ApiError(400, "the body must be a JSON object")
    return found


async def _authenticate(ctx: ApiContext, request: Request, body: bytes) -> Caller:
    signed = request.headers.get(forward.HEADER)
    if signed is not None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        key = forward.ForwardCheck.verify(
            ctx.forwards, ctx.held_secrets(), signed, request.method, target, body, time.time()
        )
        if key is None:
            raise ApiError(401, "the forwarded request's signature is not valid")
        return Caller(PEER, key, signed)
    authorization = request.headers.get("authorization", "")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        identity = ctx.users.check_token(token.strip()) if scheme.lower() == "bearer" else None
        if identity is None:
            raise ApiError(401, "the token is not valid", {"WWW-Authenticate": "Bearer"})
        return Caller(identity)
    session = ctx.sessions.find(request.cookies.get(COOKIE), ctx.clock())
    if session is None:
        raise ApiError(401, "log in first", {"WWW-Authenticate": "Bearer"})
    if request.method not in ("GET", "HEAD") and request.headers.get(CSRF_HEADER) != session.csrf:
        raise ApiError(403, f"the {CSRF_HEADER} header is missing or wrong")
    return Caller(session.identity)


def _answer(caller: Caller | None, status: int, content: Any, headers: dict[str, str]) -> Response:
    raw = json.dumps(content).encode()
    if caller is not None and caller.forwarded_key is not None:
        sealed = forward.seal_answer(caller.forwarded_key, caller.forward_header, raw)
        return Response(sealed, status, {**headers, forward.HEADER: "sealed"})
    return Response(raw, status, headers, media_type="application/json")


def endpoint(handler: Handler, *, admin: bool = False, public: bool = False) -> Callable[..., Any]:
    """Authentication, role, bad input and errors, the same for every route."""

    async def run(request: Request) -> Response:
        ctx: ApiContext = request.app.state.ctx
        caller: Caller | None = None
        try:
            body = await _read_body(request)
            if not public:
                caller = await _authenticate(ctx, request, body)
                if admin and not caller.identity.admin:
                    raise ApiError(403, f"{caller.identity.name} is read-only")
            result = await handler(ctx, request, caller or Caller(Identity("", "")), body)
        except ApiError as exc:
            return _answer(caller, exc.status, {"error": str(exc)}, exc.headers)
        except ConfigError as exc:
            return _answer(caller, 404, {"error": str(exc)}, {})
        except forward.ForwardError as exc:
            return _answer(caller, 502, {"error": str(exc)}, {})
        if isinstance(result, Response):
            return result
        return _answer(caller, 200, result, {})

    return run


async def _read_body(request: Request) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
        raise ApiError(413, f"a request body is at most {MAX_BODY} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            raise ApiError(413, f"a request body is at most {MAX_BODY} bytes")
    return body


# -- forwarding ----------------------------------------------------------------------------------


async def _from_peer(
    ctx: ApiContext, target_node: str, method: str, target: str, body: dict[str, Any] | None
) -> Any:
    peers = ctx.peers()
    if target_node not in peers:
        known = ", ".join(sorted([ctx.node, *peers]))
        raise ApiError(404, f"no node {target_node!r} (nodes: {known})")
    secret = ctx.held_secrets()[0]
    status, answer = await anyio.to_thread.run_sync(
        lambda: forward.ask_peer(
            secret, peers[target_node], ctx.port, method, target, body, tls=ctx.tls
        )
    )
    if status != 200:
        raise ApiError(status, str(answer.get("error", answer)))
    return answer


NODE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _other_node(ctx: ApiContext, request: Request) -> str | None:
    wanted = request.query_params.get("node")
    if wanted is not None and not NODE_NAME.match(wanted):
        raise ApiError(400, "node is a node's name (letters, digits, _ . -)")
    return wanted if wanted and wanted != ctx.node else None


# -- handlers ------------------------------------------------------------------------------------


async def health(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    return {"status": "ok", "node": ctx.node}


async def login(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    given = _body_json(body)
    name, password = given.get("user"), given.get("password")
    if not isinstance(name, str) or not isinstance(password, str) or not name or not password:
        raise ApiError(400, "give user and password")
    address = request.client.host if request.client else "?"
    keys = [f"user:{name}", f"address:{address}"]
    wait = ctx.throttle.wait_needed(keys, ctx.clock())
    if wait > 0:
        raise ApiError(
            429,
            f"too many wrong passwords: try again in {wait:.0f} s",
            {"Retry-After": f"{wait:.0f}"},
        )
    async with ctx.password_checks:
        identity = await anyio.to_thread.run_sync(ctx.users.check_password, name, password)
    if identity is None:
        ctx.throttle.failed(keys, ctx.clock())
        log.warning("console: wrong password for %r from %s", name, address)
        raise ApiError(401, "wrong user or password")
    ctx.throttle.succeeded(keys)
    ident, session = ctx.sessions.open(identity, ctx.clock())
    log.info("console: %s logged in from %s", name, address)
    response = _answer(None, 200, _session_info(ctx, identity, session.csrf), {})
    response.set_cookie(COOKIE, ident, httponly=True, secure=ctx.tls, samesite="strict", path="/")
    return response


def _session_info(ctx: ApiContext, identity: Identity, csrf: str | None) -> dict[str, Any]:
    return {"user": identity.name, "role": identity.role, "csrf": csrf, "node": ctx.node}


async def session_info(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    session = ctx.sessions.find(request.cookies.get(COOKIE), ctx.clock())
    return _session_info(ctx, caller.identity, session.csrf if session else None)


async def logout(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    ctx.sessions.close(request.cookies.get(COOKIE))
    response = _answer(None, 200, {"message": "logged out"}, {})
    response.delete_cookie(COOKIE, path="/")
    return response


async def state(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    other = _other_node(ctx, request)
    if other:
        return await _from_peer(ctx, other, "GET", "/api/v1/state", None)
    report, _ = await anyio.to_thread.run_sync(node_report, ctx.state_dir, [])
    return report


async def cluster(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    """Every node's document, asked of each at once: the console's one page."""
    nodes: dict[str, Any] = {}

    async def one(name: str) -> None:
        try:
            if name == ctx.node:
                nodes[name], _ = await anyio.to_thread.run_sync(node_report, ctx.state_dir, [])
            else:
                nodes[name] = await _from_peer(ctx, name, "GET", "/api/v1/state", None)
        except (ApiError, forward.ForwardError) as exc:
            nodes[name] = {"error": str(exc)}

    order = sorted([ctx.node, *ctx.peers()])  # the same page whichever node is asked
    async with anyio.create_task_group() as group:
        for name in order:
            group.start_soon(one, name)
    return {"node": ctx.node, "nodes": {name: nodes[name] for name in order}}


async def command(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    module, name = request.path_params["module"], request.path_params["command"]
    check_name(module)
    if name not in COMMANDS:
        raise ApiError(404, f"no command {name!r} (commands: {', '.join(COMMANDS)})")
    given = _body_json(body)
    force = given.get("force", False)
    target = given.get("node", ctx.node)
    if not isinstance(force, bool) or not isinstance(target, str):
        raise ApiError(400, "force is true or false, node a node's name")
    if name == "swap" and target == ctx.node and caller.forwarded_key is None:
        # the serving node hands over: asked here, the swap goes where the module serves
        local = await _failover(ctx, module)
        if local.get("state") not in SERVING and local.get("peer", {}).get("state") in SERVING:
            target = local["peer"]["node"]
    if target != ctx.node:
        if caller.forwarded_key is not None:
            raise ApiError(400, "a forwarded command is not forwarded again")
        return await _from_peer(
            ctx,
            target,
            "POST",
            f"/api/v1/modules/{module}/{name}",
            {"node": target, "force": force},
        )
    extra = {"force": True} if force else {}
    path = _module_socket(ctx, module)
    log.info("console: %s asks %s of module %s", caller.identity.name, name, module)
    try:
        answer = await anyio.to_thread.run_sync(lambda: ask(path, name, timeout=None, **extra))
    except ControlError as exc:
        raise ApiError(409, str(exc)) from None
    return {"node": ctx.node, "module": module, "command": name, "failover": answer}


def _module_socket(ctx: ApiContext, module: str) -> str:
    path = module_socket(ctx.state_dir, module)
    if not Path(path).exists():
        raise ApiError(404, f"module {module!r} is not run with failover on node {ctx.node}")
    return path


async def _failover(ctx: ApiContext, module: str) -> dict[str, Any]:
    path = _module_socket(ctx, module)
    try:
        return await anyio.to_thread.run_sync(lambda: ask(path, "state"))
    except ControlError as exc:
        raise ApiError(409, str(exc)) from None


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query_params.get(name)
    if text is None:
        return default
    if not text.isdigit() or not low <= int(text) <= high:
        raise ApiError(400, f"{name} is a whole number from {low} to {high}")
    return int(text)


async def module_log_page(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    module = request.path_params["module"]
    check_name(module)
    other = _other_node(ctx, request)
    if other:
        return await _from_peer(ctx, other, "GET", f"{request.url.path}?{request.url.query}", None)
    kind = request.query_params.get("kind", "module")
    if kind not in ("module", "app"):
        raise ApiError(400, "kind is module or app")
    if module not in ctx.modules and not Path(module_log(ctx.state_dir, module)).parent.exists():
        raise ApiError(404, f"no module {module!r} on node {ctx.node}")
    path = Path(
        app_log(ctx.state_dir, module) if kind == "app" else module_log(ctx.state_dir, module)
    )
    lines = _int_param(request, "lines", 100, 0, logview.MAX_LINES)
    wait = _int_param(request, "wait", 0, 0, int(MAX_WAIT))
    after_text = request.query_params.get("after")
    if after_text is None:
        if logview.size_of(path) < 0:
            return {"lines": [], "next": 0, "rotated": False, "node": ctx.node}
        page = await anyio.to_thread.run_sync(logview.last_lines, path, lines)
        return {**page, "node": ctx.node}
    after = _int_param(request, "after", 0, 0, 1 << 62)
    deadline = anyio.current_time() + wait
    while logview.size_of(path) == after and anyio.current_time() < deadline:
        await anyio.sleep(0.25)
    if logview.size_of(path) < 0:
        return {"lines": [], "next": 0, "rotated": after > 0, "node": ctx.node}
    page = await anyio.to_thread.run_sync(logview.lines_after, path, after)
    return {**page, "node": ctx.node}


def _journal_bytes(ctx: ApiContext, report: dict[str, Any]) -> dict[tuple[str, int], int]:
    sizes = {}
    for module in report["modules"]:
        for index in stream_indexes(ctx.state_dir, module):
            folder = Path(journal_dir(ctx.state_dir, module, index))
            if folder.is_dir():
                sizes[(module, index)] = sum(
                    f.stat().st_size for f in folder.iterdir() if f.is_file()
                )
    return sizes


async def metrics_page(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    def gather() -> bytes:
        report, _ = node_report(ctx.state_dir, [])
        found = metrics.families(ctx.node, report, _journal_bytes(ctx, report))
        return generate_latest(metrics.registry_of(lambda: found))

    text = await anyio.to_thread.run_sync(gather)
    return Response(text, 200, media_type=CONTENT_TYPE_LATEST)


async def snapshot_file(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    other = _other_node(ctx, request)
    if other:
        answer = await _from_peer(ctx, other, "GET", "/api/v1/snapshot?encoding=base64", None)
        data, name = base64.b64decode(answer["zip"]), answer["name"]
    else:
        data = await anyio.to_thread.run_sync(
            lambda: snapshot.write_snapshot(
                ctx.node, ctx.state_dir, ctx.config_dir, ctx.held_secrets()
            )
        )
        name = snapshot.snapshot_name(ctx.node)
        log.info("console: %s took a support snapshot", caller.identity.name)
        if request.query_params.get("encoding") == "base64":
            return {"name": name, "zip": base64.b64encode(data).decode()}
    return Response(
        data,
        200,
        {"Content-Disposition": f'attachment; filename="{name}"'},
        media_type="application/zip",
    )


async def openapi(ctx: ApiContext, request: Request, caller: Caller, body: bytes) -> Any:
    return document()


async def _console_page(request: Request) -> Response:
    return FileResponse(CONSOLE / "index.html", headers=_page_headers())


def _page_headers() -> dict[str, str]:
    # everything comes from the node itself: no CDN, no inline script, no framing
    return {
        "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


async def _root(request: Request) -> Response:
    return RedirectResponse("/console/")


_LOGIN, _SESSION, _LOGOUT = (
    endpoint(login, public=True),
    endpoint(session_info),
    endpoint(logout),
)


async def _session_route(request: Request) -> Response:
    # one route for the three methods: the 405 of another method names all three in Allow
    chosen = {"POST": _LOGIN, "GET": _SESSION, "DELETE": _LOGOUT}[request.method]
    response: Response = await chosen(request)
    return response


def make_app(ctx: ApiContext) -> Starlette:
    v1 = "/api/v1"
    routes = [
        Route(f"{v1}/health", endpoint(health, public=True)),
        Route(f"{v1}/session", _session_route, methods=["GET", "POST", "DELETE"]),
        Route(f"{v1}/state", endpoint(state)),
        Route(f"{v1}/cluster", endpoint(cluster)),
        Route(f"{v1}/modules/{{module}}/log", endpoint(module_log_page)),
        Route(
            f"{v1}/modules/{{module}}/{{command}}", endpoint(command, admin=True), methods=["POST"]
        ),
        Route(f"{v1}/snapshot", endpoint(snapshot_file, admin=True)),
        Route(f"{v1}/openapi.json", endpoint(openapi)),
        Route("/metrics", endpoint(metrics_page)),
        Route("/", _root),
        Route("/console/", _console_page),
        Mount("/console", StaticFiles(directory=CONSOLE), name="console"),
    ]
    app = Starlette(routes=routes)
    app.state.ctx = ctx
    return app
