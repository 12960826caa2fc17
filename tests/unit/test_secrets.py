"""The cluster secret files: refused when anyone but root could read or replace them, written
strong and atomically by `tandem secret new`, rotated one node at a time (new --next, promote,
retire) with heartbeats accepted at every step, and followed by a running node without a
restart — a file broken during a rotation keeps the secrets held before."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tandem.engine.config import secrets
from tandem.engine.config.modules import ConfigError
from tandem.engine.config.secrets import (
    SecretStore,
    load_keyring,
    next_path,
    previous_path,
    read_secret,
    secret_path,
)
from tandem.heartbeat.packet import BadPacket, BeatChecker, Heartbeat, decode_signed, encode

CLI = [sys.executable, "-m", "tandem.engine.cli"]
OLD = b"old-secret-0123456789abcdef-0123"
NEW = b"new-secret-0123456789abcdef-4567"


def _secret_file(directory: Path, content: bytes = OLD, mode: int = 0o600) -> Path:
    path = secret_path(directory)
    path.write_bytes(content + b"\n")
    path.chmod(mode)
    return path


def _tandem(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "secret", *args, "--config-dir", str(config), "--state-dir", str(config / "st")],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660])
def test_a_secret_open_to_group_or_others_is_refused_with_the_fix(
    tmp_path: Path, mode: int
) -> None:
    path = _secret_file(tmp_path, mode=mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {path}"):
        read_secret(path)


@pytest.mark.root
def test_a_secret_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = _secret_file(tmp_path)
    os.chown(path, 65534, 65534)
    with pytest.raises(ConfigError, match=f"owned by uid 65534, not root: chown root {path}"):
        read_secret(path)


def test_a_symlink_a_short_secret_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    real = _secret_file(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ConfigError, match="cannot read"):
        read_secret(link)
    short = tmp_path / "short"
    short.write_bytes(b"abc")
    short.chmod(0o600)
    with pytest.raises(ConfigError, match="holds 3 bytes"):
        read_secret(short)
    with pytest.raises(ConfigError, match="No such file"):
        read_secret(tmp_path / "none")


def test_secret_new_writes_a_strong_private_file_and_never_overwrites_by_surprise(
    tmp_path: Path,
) -> None:
    done = _tandem(tmp_path, "new")
    assert done.returncode == 0, done.stderr
    path = secret_path(tmp_path)
    st = path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    secret = read_secret(path)
    assert len(secret) == 64 and int(secret, 16) > 0
    assert "key id" in done.stdout and secret.decode() not in done.stdout
    again = _tandem(tmp_path, "new")
    assert again.returncode == 1 and "already holds a secret" in again.stderr
    assert "Traceback" not in again.stderr and read_secret(path) == secret
    forced = _tandem(tmp_path, "new", "--force")
    assert forced.returncode == 0 and read_secret(path) != secret
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".secret")]  # no leftovers


def test_a_next_secret_needs_a_current_one(tmp_path: Path) -> None:
    done = _tandem(tmp_path, "new", "--next")
    assert done.returncode == 1 and "needs a current one" in done.stderr


def test_the_rotation_steps_through_the_command_line(tmp_path: Path) -> None:
    path = _secret_file(tmp_path)
    assert _tandem(tmp_path, "new", "--next").returncode == 0
    upcoming = read_secret(next_path(path))
    held = load_keyring(path)
    assert (held.current, held.next, held.previous) == (OLD, upcoming, None)
    promoted = _tandem(tmp_path, "promote")
    assert promoted.returncode == 0, promoted.stderr
    held = load_keyring(path)
    assert (held.current, held.next, held.previous) == (upcoming, None, OLD)
    assert not next_path(path).exists()
    assert stat.S_IMODE(previous_path(path).stat().st_mode) == 0o600
    again = _tandem(tmp_path, "promote")
    assert again.returncode == 1 and "no next secret" in again.stderr
    status = _tandem(tmp_path, "status")
    assert status.returncode == 0 and "previous" in status.stdout, status.stderr
    retired = _tandem(tmp_path, "retire")
    assert retired.returncode == 0, retired.stderr
    assert not previous_path(path).exists()
    assert load_keyring(path) == secrets.Keyring(upcoming)


def test_a_promote_cut_half_way_can_be_run_again(tmp_path: Path) -> None:
    path = _secret_file(tmp_path)
    next_path(path).write_bytes(NEW)
    next_path(path).chmod(0o600)
    # the first of its two steps done, then a crash
    previous_path(path).write_bytes(OLD)
    previous_path(path).chmod(0o600)
    held = secrets.promote(path)
    assert (held.current, held.next, held.previous) == (NEW, None, OLD)


def test_promote_refuses_while_an_earlier_secret_is_not_retired(tmp_path: Path) -> None:
    path = _secret_file(tmp_path)
    for other, content in ((next_path(path), NEW), (previous_path(path), b"e" * 32)):
        other.write_bytes(content)
        other.chmod(0o600)
    with pytest.raises(ConfigError, match="retire first"):
        secrets.promote(path)
    assert read_secret(path) == OLD and read_secret(next_path(path)) == NEW


def _node(directory: Path) -> SecretStore:
    directory.mkdir()
    _secret_file(directory)
    return SecretStore(secret_path(directory))


def test_heartbeats_are_accepted_at_every_step_of_a_rotation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets, "RECHECK_EVERY", 0.0)
    a, b = _node(tmp_path / "a"), _node(tmp_path / "b")
    checkers = {
        "a": BeatChecker(b.heartbeat_secrets, {"a"}),
        "b": BeatChecker(a.heartbeat_secrets, {"b"}),
    }
    seq = 0

    def beats_cross() -> None:
        nonlocal seq
        seq += 1
        for name, store, hearer in (("a", a, checkers["a"]), ("b", b, checkers["b"])):
            data = encode(store.heartbeat_secrets()[0], Heartbeat(name, 1, seq))
            assert hearer.take("main", data) is not None, hearer.last_reject

    def install_next(store: SecretStore) -> None:
        next_path(store.path).write_bytes(NEW)
        next_path(store.path).chmod(0o600)

    beats_cross()
    install_next(a)
    beats_cross()
    install_next(b)
    beats_cross()
    secrets.promote(a.path)
    beats_cross()
    # a signs with the new secret now, b still with the old one, which a holds as previous
    assert a.role_of(checkers["b"].signer["b"]) == "previous"
    secrets.promote(b.path)
    beats_cross()
    assert a.role_of(checkers["b"].signer["b"]) == "current"
    secrets.retire(a.path)
    secrets.retire(b.path)
    beats_cross()
    assert a.keyring() == secrets.Keyring(NEW) == b.keyring()
    old = encode(OLD, Heartbeat("b", 1, seq + 1))
    assert checkers["b"].take("main", old) is None  # the retired secret is no longer accepted


def test_a_file_broken_while_the_node_runs_keeps_the_secrets_held_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(secrets, "RECHECK_EVERY", 0.0)
    store = _node(tmp_path / "a")
    upcoming = next_path(store.path)
    upcoming.write_bytes(NEW)
    upcoming.chmod(0o644)  # a slip: readable by others
    with caplog.at_level(logging.ERROR):
        assert store.keyring() == secrets.Keyring(OLD)
        assert store.keyring() == secrets.Keyring(OLD)
    complaints = [r for r in caplog.records if "chmod 600" in r.getMessage()]
    assert len(complaints) == 1  # said once, not on every heartbeat
    upcoming.chmod(0o600)
    assert store.keyring() == secrets.Keyring(OLD, NEW)


def test_a_store_rereads_at_most_once_a_second(tmp_path: Path) -> None:
    store = _node(tmp_path / "a")
    path = store.path
    path.write_bytes(NEW)
    assert store.keyring().current == OLD  # within the second: the cached secrets


def test_a_heartbeat_signed_with_no_held_secret_is_forged() -> None:
    data = encode(b"x" * 32, Heartbeat("a", 1, 1))
    with pytest.raises(BadPacket) as caught:
        decode_signed((OLD, NEW), data)
    assert caught.value.kind == "forged"
    assert decode_signed((OLD, NEW), encode(NEW, Heartbeat("a", 1, 1)))[1] == 1
