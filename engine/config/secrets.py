"""The cluster secret files, checked, watched while the node runs, and rotated without an outage.

A node holds ``<config-dir>/secret`` (the current secret) and, during a rotation,
``secret.next`` (installed on both nodes before either uses it) and ``secret.previous`` (kept
until the peer has moved on too). Each must be a regular file owned by root (or by the user the
process runs as, for an unprivileged test) with no group or other permission bits: a secret
anyone else could read or replace is refused with the command that fixes it.

The rotation, one node at a time, never cuts the pair:

1. ``tandem secret new --next`` on one node, the same ``secret.next`` copied to the other:
   connections prefer the next secret as soon as both ends hold it; heartbeats stay signed
   with the current one.
2. ``tandem secret promote`` on each node: the current secret becomes the previous one, the next
   becomes current. A promoted node signs with the new secret, which the other holds as its
   next; the other signs with the old one, which the promoted node holds as its previous.
3. ``tandem secret retire`` on each node once both are promoted: the previous secret is deleted.
   It refuses while a running module's peer still signs its heartbeats with that secret.

A running node re-reads the files (at most once a second, by their status): none of the steps
needs a restart. A file made invalid while the node runs is reported and the secrets held
before are kept, so a slip during a rotation cannot cut a running pair.
"""

from __future__ import annotations

import logging
import os
import secrets as random_source
import stat
import time
from pathlib import Path

from tandem.engine.config.modules import MIN_SECRET_BYTES, ConfigError
from tandem.engine.protocol.keys import Keyring, key_id
from tandem.fsdriver.syscall import fsync_directory

log = logging.getLogger(__name__)

SECRET_NAME = "secret"
NEXT_SUFFIX = ".next"
PREVIOUS_SUFFIX = ".previous"
NEW_SECRET_BYTES = 32  # written as 64 hexadecimal characters
RECHECK_EVERY = 1.0  # seconds between looks at the files while a node runs


def secret_path(config_dir: str | Path) -> Path:
    return Path(config_dir) / SECRET_NAME


def next_path(secret_file: str | Path) -> Path:
    return Path(f"{secret_file}{NEXT_SUFFIX}")


def previous_path(secret_file: str | Path) -> Path:
    return Path(f"{secret_file}{PREVIOUS_SUFFIX}")


def read_secret(path: str | Path) -> bytes:
    """The secret in `path`, or ConfigError saying what is wrong and how to fix it."""
    try:
        # O_NOFOLLOW: the file checked is the file read (a symlink could point anywhere)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"secret file {path} is not a regular file")
        if st.st_uid not in (0, os.geteuid()):
            raise ConfigError(
                f"secret file {path} is owned by uid {st.st_uid}, not root: chown root {path}"
            )
        if st.st_mode & 0o077:
            raise ConfigError(
                f"secret file {path} is open to group or others "
                f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 {path}"
            )
        secret = os.read(fd, 65536).strip()
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"secret file {path} holds {len(secret)} bytes; use at least {MIN_SECRET_BYTES} "
            "(tandem secret new writes a strong one)"
        )
    return secret


def _optional(path: Path) -> bytes | None:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read secret file {path}: {exc.strerror}") from None
    return read_secret(path)


def load_keyring(secret_file: str | Path) -> Keyring:
    current = read_secret(secret_file)
    upcoming = _optional(next_path(secret_file))
    previous = _optional(previous_path(secret_file))
    return Keyring(
        current,
        upcoming if upcoming != current else None,
        previous if previous not in (current, upcoming) else None,
    )


def _look(path: Path) -> tuple[int, int, int, int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size, st.st_mode, st.st_uid)


class SecretStore:
    """The secrets of a running node: `keyring()` is asked for each connection and heartbeat
    and follows the files as an admin rotates them."""

    def __init__(self, secret_file: str | Path) -> None:
        self.path = Path(secret_file)
        self._files = (self.path, next_path(self.path), previous_path(self.path))
        self._seen = self._looks()
        self._keyring = load_keyring(self.path)  # at start, a bad file is an error
        self._checked = time.monotonic()
        self._complained: object = None

    def _looks(self) -> tuple[object, ...]:
        return tuple(_look(path) for path in self._files)

    def keyring(self) -> Keyring:
        now = time.monotonic()
        if now - self._checked < RECHECK_EVERY:
            return self._keyring
        self._checked = now
        seen = self._looks()
        if seen == self._seen:
            return self._keyring
        try:
            keyring = load_keyring(self.path)
        except ConfigError as exc:
            if self._complained != seen:
                log.error("%s; keeping the secrets read before", exc)
                self._complained = seen
            return self._keyring
        self._seen, self._keyring, self._complained = seen, keyring, None
        log.info("cluster secrets now held: %s", describe(keyring))
        return keyring

    def heartbeat_secrets(self) -> tuple[bytes, ...]:
        """The secret a heartbeat is signed with first, then every other one accepted."""
        keyring = self.keyring()
        return (keyring.signing, *(s for s in keyring.preferred if s != keyring.signing))

    def role_of(self, secret: bytes | None) -> str | None:
        """Which of the held secrets `secret` is: "current", "next", "previous" (None: none)."""
        keyring = self.keyring()
        for role in ("current", "next", "previous"):
            if secret is not None and getattr(keyring, role) == secret:
                return role
        return None


def fingerprint(secret: bytes) -> str:
    """How a secret is named to an admin: its key id (as on the wire), which reveals nothing."""
    return key_id(secret).hex()


def describe(keyring: Keyring) -> str:
    parts = [f"current {fingerprint(keyring.current)}"]
    if keyring.next:
        parts.append(f"next {fingerprint(keyring.next)}")
    if keyring.previous:
        parts.append(f"previous {fingerprint(keyring.previous)}")
    return ", ".join(parts)


def write_secret(path: Path, secret: bytes) -> None:
    """Put `secret` at `path` atomically, mode 0600, owned by root when run as root: no moment
    at which the file exists with another content or mode, even across a crash."""
    temporary = path.with_name(f".{path.name}.{random_source.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o600)  # whatever the umask
        os.write(fd, secret + b"\n")
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(temporary, path)
    fsync_directory(path.parent)


def new_secret() -> bytes:
    return random_source.token_hex(NEW_SECRET_BYTES).encode()


def promote(secret_file: Path) -> Keyring:
    """Step 2 of a rotation: the next secret becomes current, the current one previous."""
    upcoming, previous = next_path(secret_file), previous_path(secret_file)
    if not upcoming.exists():
        raise ConfigError(f"no next secret to promote: {upcoming} does not exist")
    keyring = load_keyring(secret_file)  # all three must be valid before anything moves
    if keyring.previous is not None:
        raise ConfigError(
            f"{previous} still holds an earlier secret: run tandem secret retire first"
        )
    # two atomic steps; between them (or after a crash) the node holds all three, which is
    # as valid as before and after, and promote may simply be run again
    if not previous.exists() or read_secret(previous) != keyring.current:
        write_secret(previous, keyring.current)
    os.rename(upcoming, secret_file)
    fsync_directory(secret_file.parent)
    return load_keyring(secret_file)


def retire(secret_file: Path) -> None:
    previous = previous_path(secret_file)
    if not previous.exists():
        raise ConfigError(f"no previous secret to retire: {previous} does not exist")
    previous.unlink()
    fsync_directory(secret_file.parent)
