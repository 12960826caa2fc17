"""Who may use the API and console: users with passwords and script tokens, kept in
``<config-dir>/console/users.json`` (root only, mode 0600).

A password is stored as an Argon2id hash (memory-hard: a stolen file costs an attacker ~64 MiB
and tens of milliseconds a guess). A token is 32 random bytes shown once; only its SHA-256 is
kept — it has the entropy a password lacks, so a fast hash suffices. Two roles: ``admin`` may
drive modules and take snapshots; ``read-only`` sees states, logs and metrics.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from tandem.engine.config.modules import ConfigError

ROLES = ("admin", "read-only")
TOKEN_PREFIX = "tdm_"
MIN_PASSWORD = 8
_HASHER = PasswordHasher()  # argon2id, RFC 9106 low-memory profile (64 MiB, 3 passes)
# verified against when the user does not exist, so that a wrong name costs as long as a
# wrong password (no user enumeration by timing)
_DUMMY_HASH = _HASHER.hash("tandem: no such user")


def users_file(config_dir: str | Path) -> Path:
    return Path(config_dir, "console", "users.json")


@dataclass(frozen=True)
class Identity:
    name: str
    role: str

    @property
    def admin(self) -> bool:
        return self.role == "admin"


class Users:
    """The users file, read anew whenever it changes (a new password takes effect at once)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._seen: tuple[int, int, int] | None = None
        self._data: dict[str, Any] = {"users": {}, "tokens": {}}

    def _load(self) -> dict[str, Any]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            self._seen, self._data = None, {"users": {}, "tokens": {}}
            return self._data
        look = (info.st_ino, info.st_mtime_ns, info.st_size)
        if look != self._seen:
            self._data = read_users(self.path)
            self._seen = look
        return self._data

    def any_user(self) -> bool:
        return bool(self._load()["users"])

    def check_password(self, name: str, password: str) -> Identity | None:
        entry = self._load()["users"].get(name)
        try:
            _HASHER.verify(entry["hash"] if entry else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        return Identity(name, entry["role"]) if entry else None

    def check_token(self, token: str) -> Identity | None:
        ident, _, secret = token.removeprefix(TOKEN_PREFIX).partition("_")
        entry = self._load()["tokens"].get(ident)
        if entry is None or not token.startswith(TOKEN_PREFIX):
            return None
        digest = hashlib.sha256(secret.encode()).hexdigest()
        if not hmac.compare_digest(digest, entry["sha256"]):
            return None
        return Identity(f"token {entry['name']}", entry["role"])


def read_users(path: Path) -> dict[str, Any]:
    try:
        info = path.stat()
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ConfigError(f"{path}: readable by others (chmod 600 {path})")
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a users file")
    data.setdefault("users", {})
    data.setdefault("tokens", {})
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out, indent=2, sort_keys=True)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _existing(path: Path) -> dict[str, Any]:
    return read_users(path) if path.exists() else {"users": {}, "tokens": {}}


def set_password(path: Path, name: str, password: str, role: str) -> None:
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"user name {name!r}: letters, digits, - and _ only")
    if len(password) < MIN_PASSWORD:
        raise ConfigError(f"a password needs at least {MIN_PASSWORD} characters")
    data = _existing(path)
    data["users"][name] = {"hash": _HASHER.hash(password), "role": role}
    _write(path, data)


def remove_user(path: Path, name: str) -> None:
    data = _existing(path)
    if data["users"].pop(name, None) is None:
        raise ConfigError(f"no user {name!r}")
    _write(path, data)


def new_token(path: Path, name: str, role: str) -> str:
    """A new token for scripts (returned once, never stored)."""
    if role not in ROLES:
        raise ConfigError(f"role {role!r} is not one of {', '.join(ROLES)}")
    data = _existing(path)
    if any(entry["name"] == name for entry in data["tokens"].values()):
        raise ConfigError(f"a token named {name!r} exists (revoke it first)")
    ident, secret = secrets.token_hex(6), secrets.token_urlsafe(32)
    data["tokens"][ident] = {
        "name": name,
        "role": role,
        "sha256": hashlib.sha256(secret.encode()).hexdigest(),
    }
    _write(path, data)
    return f"{TOKEN_PREFIX}{ident}_{secret}"


def revoke_token(path: Path, name: str) -> None:
    data = _existing(path)
    found = [ident for ident, entry in data["tokens"].items() if entry["name"] == name]
    if not found:
        raise ConfigError(f"no token named {name!r}")
    for ident in found:
        del data["tokens"][ident]
    _write(path, data)


def listing(path: Path) -> list[str]:
    data = _existing(path)
    lines = [f"user {name} ({entry['role']})" for name, entry in sorted(data["users"].items())]
    lines += [f"token {e['name']} ({e['role']})" for e in data["tokens"].values()]
    return lines
