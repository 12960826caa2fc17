"""The API's pure parts: sessions end when they should, wrong passwords slow the guesser down,
the users file keeps no secret in the clear and refuses to be read by others, node-to-node
requests cannot be forged, replayed or read, log pages follow a growing and a rotated log,
and the metrics parse as Prometheus text."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tandem.engine.api import forward, logview
from tandem.engine.api.metrics import families, registry_of
from tandem.engine.api.sessions import ABSOLUTE_LIMIT, IDLE_LIMIT, Sessions, Throttle
from tandem.engine.api.users import (
    Identity,
    Users,
    new_token,
    revoke_token,
    set_password,
)
from tandem.engine.config.modules import ConfigError

ADMIN = Identity("admin", "admin")


def test_a_session_ends_after_idle_time_and_after_its_whole_life() -> None:
    sessions = Sessions()
    ident, _ = sessions.open(ADMIN, now=0.0)
    assert sessions.find(ident, IDLE_LIMIT - 1) is not None  # seen: idle time starts again
    assert sessions.find(ident, 2 * IDLE_LIMIT - 2) is not None
    assert sessions.find(ident, 3 * IDLE_LIMIT) is None  # idle too long
    busy, _ = sessions.open(ADMIN, now=0.0)
    at = 0.0
    while at < ABSOLUTE_LIMIT - IDLE_LIMIT:
        at += IDLE_LIMIT / 2
        assert sessions.find(busy, at) is not None
    assert sessions.find(busy, ABSOLUTE_LIMIT + 1) is None  # however busy
    assert sessions.find("made-up", 0.0) is None
    closed, _ = sessions.open(ADMIN, now=0.0)
    sessions.close(closed)
    assert sessions.find(closed, 1.0) is None


def test_wrong_passwords_double_the_wait_and_a_success_clears_it() -> None:
    throttle = Throttle()
    keys = ["user:admin", "address:198.18.0.3"]
    for attempt in range(3):
        assert throttle.wait_needed(keys, 10.0 * attempt) == 0
        throttle.failed(keys, 10.0 * attempt)
    assert throttle.wait_needed(keys, 20.0) == pytest.approx(2.0)
    throttle.failed(keys, 22.0)
    assert throttle.wait_needed(keys, 22.0) == pytest.approx(4.0)
    # another address guessing the same user waits too; another user from elsewhere does not
    assert throttle.wait_needed(["user:admin", "address:elsewhere"], 22.0) > 0
    assert throttle.wait_needed(["user:other", "address:elsewhere"], 22.0) == 0
    for _ in range(20):
        throttle.failed(keys, 100.0)
    assert throttle.wait_needed(keys, 100.0) == pytest.approx(300.0)  # capped
    throttle.succeeded(keys)
    assert throttle.wait_needed(keys, 100.0) == 0


def test_the_users_file_holds_hashes_and_a_token_works_until_revoked(tmp_path: Path) -> None:
    path = tmp_path / "console" / "users.json"
    set_password(path, "admin", "correct horse", "admin")
    set_password(path, "viewer", "battery staple", "read-only")
    stored = path.read_text()
    assert "correct horse" not in stored and "$argon2id$" in stored
    assert os.stat(path).st_mode & 0o777 == 0o600
    users = Users(path)
    assert users.check_password("admin", "correct horse") == ADMIN
    assert users.check_password("admin", "correct horsE") is None
    assert users.check_password("nobody", "correct horse") is None
    assert users.check_password("viewer", "battery staple") == Identity("viewer", "read-only")
    token = new_token(path, "prometheus", "read-only")
    assert token not in path.read_text()
    assert users.check_token(token) == Identity("token prometheus", "read-only")
    assert users.check_token(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert users.check_token("tdm_nothing_here") is None
    revoke_token(path, "prometheus")
    assert users.check_token(token) is None
    with pytest.raises(ConfigError, match="at least 8"):
        set_password(path, "admin", "short", "admin")
    with pytest.raises(ConfigError, match="role"):
        set_password(path, "admin", "long enough", "root")


def test_a_users_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    set_password(path, "admin", "correct horse", "admin")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        Users(path).check_password("admin", "correct horse")


def test_a_forwarded_request_is_refused_when_forged_replayed_late_or_changed() -> None:
    secret, other = b"s" * 32, b"o" * 32
    check = forward.ForwardCheck()
    now = time.time()
    header = forward.sign(secret, "POST", "/api/v1/modules/web/swap", b"{}", now)
    # changed on the way: method, target or body
    assert check.verify((secret,), header, "POST", "/api/v1/modules/db/swap", b"{}", now) is None
    assert check.verify((secret,), header, "POST", "/api/v1/modules/web/swap", b"[]", now) is None
    assert check.verify((other,), header, "POST", "/api/v1/modules/web/swap", b"{}", now) is None
    assert (
        check.verify((secret,), header, "POST", "/api/v1/modules/web/swap", b"{}", now + 61) is None
    )
    key = check.verify((other, secret), header, "POST", "/api/v1/modules/web/swap", b"{}", now)
    assert key is not None  # any held secret (a rotation in progress)
    assert check.verify((secret,), header, "POST", "/api/v1/modules/web/swap", b"{}", now) is None
    assert check.verify((secret,), "garbage", "GET", "/", b"", now) is None
    sealed = forward.seal_answer(key, header, b'{"state": "PRIM"}')
    assert b"PRIM" not in sealed
    assert forward.open_answer(secret, header, sealed) == b'{"state": "PRIM"}'
    with pytest.raises(forward.ForwardError):
        forward.open_answer(secret, header, sealed[:-1] + bytes([sealed[-1] ^ 1]))


def test_log_pages_follow_a_growing_log_and_start_over_after_rotation(tmp_path: Path) -> None:
    log = tmp_path / "module.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    page = logview.last_lines(log, 3)
    assert page["lines"] == ["line 497", "line 498", "line 499"]
    with open(log, "a") as out:
        out.write("line 500\nline 5")  # the last line is not finished yet
    page = logview.lines_after(log, page["next"])
    assert page["lines"] == ["line 500", "line 5"]
    log.write_text("after rotation\n")
    page = logview.lines_after(log, page["next"])
    assert page == {"lines": ["after rotation"], "next": 15, "rotated": True}
    big = tmp_path / "big.log"
    big.write_text("x" * 100 + "\n" + "y" * (logview.MAX_PAGE + 10) + "\n")
    first = logview.lines_after(big, 0)
    assert first["lines"] == ["x" * 100] and first["next"] == 101  # whole lines only
    second = logview.lines_after(big, first["next"])
    assert len(second["lines"][0]) == logview.MAX_PAGE  # a line longer than a page, in pieces


def _report() -> dict:
    return {
        "version": 1,
        "state_dir": "/var/lib/tandem",
        "modules": {
            "web": {
                "failover": {
                    "running": True,
                    "state": "PRIM",
                    "serving": True,
                    "for_s": 12.5,
                    "checker_failures": 2,
                    "takeovers": {"total": 3, "last_s": [0.4, 0.7]},
                    "peer": {
                        "heartbeat": {
                            "networks": {"main": {"silent_for_s": 0.3}},
                            "rejected": {"bad signature": 7},
                        }
                    },
                },
                "streams": [
                    {
                        "index": 0,
                        "running": True,
                        "role": "primary",
                        "replication": "in sync",
                        "in_flight": 4,
                        "in_flight_bytes": 16384,
                        "writes_waiting": 1,
                        "ack_latency": {
                            "bounds": [0.001, 0.01],
                            "cumulative": [5, 9],
                            "sum": 0.05,
                            "count": 10,
                        },
                        "resync": {"bytes_done": 10, "bytes_total": 100},
                    }
                ],
            }
        },
    }


def test_the_metrics_parse_as_prometheus_text_with_the_values_of_the_state() -> None:
    text = generate_latest(registry_of(lambda: families("a", _report(), {("web", 0): 4096})))
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text.decode())
        for s in family.samples
    }
    web = ("module", "web")
    assert samples[("tandem_module_state", (web, ("state", "PRIM")))] == 1
    assert samples[("tandem_module_state", (web, ("state", "SECOND")))] == 0
    assert samples[("tandem_module_serving", (web, ("node", "a")))] == 1
    assert samples[("tandem_checker_failures_total", (web,))] == 2
    assert samples[("tandem_takeovers_total", (web,))] == 3
    assert samples[("tandem_last_takeover_seconds", (web,))] == 0.7
    stream = (web, ("stream", "0"))
    assert samples[("tandem_stream_in_flight_bytes", stream)] == 16384
    assert samples[("tandem_ack_latency_seconds_bucket", ((("le", "0.01"), *stream)))] == 9
    assert samples[("tandem_ack_latency_seconds_bucket", ((("le", "+Inf"), *stream)))] == 10
    assert samples[("tandem_ack_latency_seconds_count", stream)] == 10
    assert samples[("tandem_resync_bytes_total", stream)] == 100
    assert samples[("tandem_journal_bytes", stream)] == 4096
    hb = (web, ("network", "main"))
    assert samples[("tandem_heartbeat_silent_seconds", hb)] == 0.3
    assert samples[("tandem_heartbeat_rejected_total", (web, ("reason", "bad signature")))] == 7
    json.dumps(_report())  # the fixture is what the status really is: JSON
