"""A stream's settings: built once from the module, handed whole to the mount child as one JSON
value (no value re-parsed from argv), each timeout under its own name; bad settings are one
clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tandem.engine.config.modules import ConfigError, parse_module
from tandem.engine.config.stream import PeerAddress, StreamSettings, module_stream
from tandem.engine.protocol.connection import AckKind
from tandem.engine.replication.copies import mount_command

MODULE = """
directories = ["/srv/app", "/var/lib/app"]
port = 7500
ack = "durable"
timeout = 2.5
resync_bandwidth = 20
[nodes]
alpha = "198.18.0.1"
beta = "198.18.0.2"
"""


def test_a_module_stream_carries_every_setting_parsed_once() -> None:
    module = parse_module("web", MODULE, "web.toml")
    settings = module_stream("alpha", module, 1, "/st", "/etc/tandem/secret")
    assert settings.stream == "web/1" and settings.directory == "/var/lib/app"
    assert settings.ack is AckKind.DURABLE and settings.durable
    assert settings.peer_timeout == settings.handshake_timeout == 2.5
    assert settings.peer == PeerAddress("198.18.0.2", 7501)
    assert settings.listen == PeerAddress("198.18.0.1", 7501)
    assert settings.resync_bandwidth == 20 * (1 << 20)
    assert settings.journal == "/st/modules/web/1/journal"
    assert settings.identity.stream == "web/1"


def test_settings_survive_json_exactly() -> None:
    module = parse_module("web", MODULE, "web.toml")
    settings = module_stream("beta", module, 0, "/st", "/secret")
    assert StreamSettings.from_json(settings.to_json()) == settings
    bare = StreamSettings("a", "m/0", "/d")
    assert StreamSettings.from_json(bare.to_json()) == bare


def test_the_mount_child_gets_one_settings_value() -> None:
    module = parse_module("web", MODULE, "web.toml")
    command = mount_command("alpha", module, 0, "/secret", "/st", verbose=False)
    at = command.index("--settings")
    assert command[at - 2 :] == ["mount", "/srv/app", "--settings", command[at + 1]]
    assert StreamSettings.from_json(command[at + 1]) == module_stream(
        "alpha", module, 0, "/st", "/secret"
    )


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[]", "not an object"),
        ('{"node": "a", "stream": "m", "directory": "/d", "colour": 1}', "unknown setting"),
        ('{"node": "a", "stream": "m", "directory": "/d", "ack": "maybe"}', "ack must be"),
        ('{"node": "a", "stream": "m", "directory": "/d", "peer": "nowhere"}', "HOST:PORT"),
        ('{"node": "a", "stream": "m", "directory": "/d", "peer_timeout": -1}', "positive"),
        ('{"node": "a", "stream": "m"}', "bad stream settings"),
        ("{", "bad stream settings"),
    ],
)
def test_bad_settings_are_one_clear_error(text: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        StreamSettings.from_json(text)


def test_settings_and_flags_together_are_refused_in_one_line(tmp_path: Path) -> None:
    settings = StreamSettings("a", "m/0", str(tmp_path), peer=PeerAddress("127.0.0.1", 9))
    flags = ["--settings", settings.to_json(), "--ack", "durable", "--retry", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "tandem.engine.cli", "mount", str(tmp_path), *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "tandem: error: --settings replaces --ack, --retry: give one or the other"
    ]
