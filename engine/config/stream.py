"""One replication stream's settings (one directory of a module, on one node), built once —
from the module's configuration or from `tandem mount`/`tandem receive` flags — and handed whole
to whatever runs the stream. The node hands them to its mount child as one JSON value
(``--settings``), so a value crosses the process boundary under one name with one meaning.

Two timeouts, two names: ``peer_timeout`` is how long the primary waits for an acknowledgement
(or for a connection and its handshake) before going on alone; ``handshake_timeout`` is how long
the secondary gives a new connection to prove it holds the secret.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tandem.engine.config.modules import SYNC_POINTS, ConfigError, ModuleConfig
from tandem.engine.config.paths import ASIDE_MARKER, control_socket, journal_dir, module_dir
from tandem.engine.protocol.connection import AckKind, Identity

ACK_KINDS = {"applied": AckKind.APPLIED, "durable": AckKind.DURABLE}
DEFAULT_RETRY = 2.0


def ack_kind(text: str) -> AckKind:
    """The acknowledgement a write waits for, from its configured name."""
    try:
        return ACK_KINDS[text]
    except KeyError:
        raise ConfigError(f"ack must be one of {', '.join(ACK_KINDS)}, not {text!r}") from None


@dataclass(frozen=True)
class PeerAddress:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PeerAddress:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StreamSettings:
    node: str
    stream: str  # the module's name and the directory's index: "web/0"
    directory: str
    secret_file: str | None = None
    ack: AckKind = AckKind.APPLIED
    # primary: "write", each change waits for the peer's acknowledgement; "fsync", a data write
    # returns once sent and fsync & co. wait for everything before them (D33)
    sync: str = "write"
    peer_timeout: float = 10.0
    handshake_timeout: float = 10.0
    retry: float = DEFAULT_RETRY  # how often the primary reconnects a lost peer
    journal: str | None = None  # this copy's journal directory
    control: str | None = None  # the stream's control socket
    resync_bandwidth: float | None = None  # bytes per second a resync may send
    peer: PeerAddress | None = None  # primary: where the secondary listens
    listen: PeerAddress | None = None  # secondary: where to listen
    # primary: acknowledge without the peer only when the node permits it (a mount the
    # failover layer runs); a mount run alone goes on alone by itself
    alone_needs_permission: bool = False
    # secondary: where its own changes go before a primary's versions replace them (default:
    # beside the journal)
    aside: str | None = None

    @property
    def aside_marker(self) -> str | None:
        """Where the node asks this copy's receiver to keep what the next resync changes."""
        return os.path.join(os.path.dirname(self.journal), ASIDE_MARKER) if self.journal else None

    @property
    def aside_dir(self) -> str | None:
        if self.aside is not None:
            return self.aside
        return os.path.join(os.path.dirname(self.journal), "aside") if self.journal else None

    @property
    def identity(self) -> Identity:
        return Identity(self.node, self.stream)

    @property
    def durable(self) -> bool:
        return self.ack is AckKind.DURABLE

    def to_json(self) -> str:
        raw = asdict(self)
        raw["ack"] = self.ack.name.lower()
        for key in ("peer", "listen"):
            address = getattr(self, key)
            raw[key] = str(address) if address is not None else None
        return json.dumps(raw, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StreamSettings:
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            unknown = set(raw) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"unknown setting(s) {', '.join(sorted(unknown))}")
            values: dict[str, Any] = dict(raw)
            values["ack"] = ack_kind(str(raw.get("ack", "applied")))
            for key in ("peer", "listen"):
                if raw.get(key) is not None:
                    values[key] = PeerAddress.parse(str(raw[key]))
            settings = cls(**values)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"bad stream settings: {exc}") from None
        for key in ("peer_timeout", "handshake_timeout", "retry"):
            value = getattr(settings, key)
            if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"bad stream settings: {key} must be a positive number")
        if settings.sync not in SYNC_POINTS:
            raise ConfigError(
                f"bad stream settings: sync must be one of {', '.join(SYNC_POINTS)}, "
                f"not {settings.sync!r}"
            )
        if not isinstance(settings.alone_needs_permission, bool):
            raise ConfigError("bad stream settings: alone_needs_permission must be true or false")
        return settings

    def with_changes(self, **changes: Any) -> StreamSettings:
        return replace(self, **changes)


def module_stream(
    node: str,
    module: ModuleConfig,
    index: int,
    state_dir: str,
    secret_file: str | None,
    *,
    failover: bool = False,
) -> StreamSettings:
    """The settings of ``module``'s directory ``index`` on ``node``, for either role: the peer
    is where the other node listens, ``listen`` where this one does. With ``failover`` the
    failover layer decides when the primary may go on alone."""
    _, peer_address = module.peer_of(node)
    port = module.port_of(index)
    return StreamSettings(
        node=node,
        stream=f"{module.name}/{index}",
        directory=module.directories[index],
        secret_file=secret_file,
        ack=ack_kind(module.ack),
        sync=module.sync,
        peer_timeout=module.timeout,
        handshake_timeout=module.timeout,
        journal=journal_dir(state_dir, module.name, index),
        control=control_socket(state_dir, module.name, index),
        resync_bandwidth=module.resync_bandwidth * (1 << 20) if module.resync_bandwidth else None,
        peer=PeerAddress(peer_address, port),
        listen=PeerAddress(module.nodes[node], port),
        alone_needs_permission=failover,
        aside=os.path.join(module_dir(state_dir, module.name), "aside"),
    )
