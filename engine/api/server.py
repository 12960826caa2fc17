"""Serving the API on the node's own trio loop (Hypercorn's trio worker): HTTPS with the
node's certificate by default, plain HTTP only when asked (a test, or behind a proxy that
terminates TLS)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from tandem.engine.api.app import ApiContext, make_app
from tandem.engine.api.certificate import ensure_certificate, fingerprint
from tandem.engine.config.modules import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Listen:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Listen | None:
        """``HOST:PORT``, ``:PORT`` (every address) or ``none``."""
        if text == "none":
            return None
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"--api {text!r}: give HOST:PORT, :PORT or none")
        return cls(host.strip("[]") or "0.0.0.0", int(port))

    def url(self, tls: bool, host: str | None = None) -> str:
        shown = host or (self.host if self.host not in ("0.0.0.0", "::") else "localhost")
        return f"{'https' if tls else 'http'}://{shown}:{self.port}/"


async def serve_api(
    ctx: ApiContext, listen: Listen, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    config = Config()
    config.bind = [
        f"[{listen.host}]:{listen.port}" if ":" in listen.host else f"{listen.host}:{listen.port}"
    ]
    config.accesslog = None
    config.errorlog = logging.getLogger("tandem.engine.api.http")
    config.graceful_timeout = 1.0
    config.include_server_header = False
    if ctx.tls:
        addresses = [listen.host] + [
            m.nodes[ctx.node] for m in ctx.modules.values() if ctx.node in m.nodes
        ]
        cert, key = ensure_certificate(ctx.config_dir, ctx.node, sorted(set(addresses)))
        config.certfile, config.keyfile = str(cert), str(key)
        log.info(
            "console and API on %s (certificate SHA-256 %s)", listen.url(True), fingerprint(cert)
        )
    else:
        log.warning("console and API on %s without TLS", listen.url(False))
    try:
        await serve(make_app(ctx), config, task_status=task_status)  # type: ignore[arg-type]
    except OSError as exc:
        raise ConfigError(
            f"the API cannot listen on {listen.host}:{listen.port}: {exc.strerror}"
        ) from None
