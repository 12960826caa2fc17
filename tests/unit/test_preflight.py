"""Mistakes found before anything starts (issue 13, point 8): modules that fight over a
directory, a port or a VIP; what this node lacks (directories, scripts, checkers' targets, the
VIP's interface and subnet, names that resolve); every mistake of a file at once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tandem.engine.config.modules import ConfigError, parse_module
from tandem.engine.config.preflight import conflicts, environment

NODES = '[nodes]\nalpha = "127.0.0.1"\nbeta = "127.0.0.2"\n'


def module(name: str, head: str, tmp: Path | None = None) -> object:
    source = str(tmp / "modules" / f"{name}.toml") if tmp else f"{name}.toml"
    return parse_module(name, head + "\n" + NODES, source)


def test_modules_that_share_a_directory_port_or_vip_conflict() -> None:
    web = module("web", 'directories = ["/srv/app"]\nport = 7400\nvip = "10.0.0.9/24"')
    same_dir = module("db", 'directories = ["/srv/app"]\nport = 7500')
    nested = module("logs", 'directories = ["/srv/app/logs"]\nport = 7600')
    ports = module("cache", 'directories = ["/srv/cache", "/srv/c2"]\nport = 7399')
    vip = module("mail", 'directories = ["/srv/mail"]\nport = 7700\nvip = "10.0.0.9/16"')
    health = module("api", 'directories = ["/srv/api"]\nport = 7800\nhealth_port = 7400')
    found = conflicts([web, same_dir, nested, ports, vip, health])  # type: ignore[list-item]
    text = "\n".join(found)
    assert "web (web.toml) and db (db.toml) both replicate /srv/app" in text
    assert "and logs (logs.toml) replicate nested directories /srv/app and /srv/app/logs" in text
    assert "web (web.toml) and cache (cache.toml) both use port 7400" in text
    assert "web (web.toml) and mail (mail.toml) both hold the VIP 10.0.0.9" in text
    assert "web (web.toml) and api (api.toml) both use port 7400" in text
    assert "cache (cache.toml) and api (api.toml) both use port 7400" in text
    assert len(found) == 7, found  # db and logs nest too
    alone = module("one", 'directories = ["/srv/one"]\nport = 7900\nhealth_port = 7900')
    assert conflicts([alone]) == [  # type: ignore[list-item]
        "one.toml: health_port: 7900 is one of the module's replication ports"
    ]
    assert conflicts([web, module("far", 'directories = ["/srv/far"]\nport = 7401')]) == []  # type: ignore[list-item]


def test_what_the_node_lacks_is_named(tmp_path: Path) -> None:
    scripts = tmp_path / "modules" / "web"
    scripts.mkdir(parents=True)
    (scripts / "start_prim").write_text("#!/bin/sh\n")  # not executable
    (scripts / "stop_prm").write_text("#!/bin/sh\n")  # misspelt
    head = (
        f'directories = ["{tmp_path}", "/nonexistent/data"]\n'
        'vip = "10.99.0.100/24"\nvip_interface = "lo"\n'
        'witness = ["no-such-host.invalid"]\n'
        '[[checker]]\nkind = "custom"\ntarget = "/nonexistent/check"\n'
        '[[checker]]\nkind = "interface"\ntarget = "nosuch0"\n'
    )
    found = environment(module("web", head, tmp_path), "alpha", failover=True)  # type: ignore[arg-type]
    text = "\n".join(found.errors)
    assert "directories: /nonexistent/data is not a directory" in text
    assert f"{scripts}/start_prim: not an executable file" in text
    assert f"{scripts}/stop_prm: not a script name Tandem runs" in text
    assert "checker[0].target: /nonexistent/check is not an executable file" in text
    assert "checker[1].target: no network interface 'nosuch0' on this node" in text
    assert "witness[0]: no-such-host.invalid does not resolve" in text
    assert "vip: 10.99.0.100 is outside the subnet of lo (127.0.0.0/8" in text
    assert len(found.errors) == 7, found.errors
    # with a fixed role nothing fails over: scripts, checkers and the VIP are not used
    fixed = environment(module("web", head, tmp_path), "alpha", failover=False)  # type: ignore[arg-type]
    assert len(fixed.errors) == 2, fixed.errors


def test_every_mistake_of_a_file_is_reported_at_once() -> None:
    text = 'directories = ["srv"]\nport = 0\nack = "fast"\nmaxloop = -1\ncolour = 1\n' + NODES
    with pytest.raises(ConfigError) as caught:
        parse_module("web", text, "web.toml")
    lines = str(caught.value).splitlines()
    assert [line.split(": ")[1] for line in lines] == [
        "colour",
        "directories[0]",
        "port",
        "ack",
        "maxloop",
    ], lines


def test_the_node_starts_nothing_when_modules_conflict(tmp_path: Path) -> None:
    (tmp_path / "modules").mkdir()
    for name, port in (("web", 7400), ("db", 7400)):
        (tmp_path / "modules" / f"{name}.toml").write_text(
            f'directories = ["{tmp_path}"]\nport = {port}\n' + NODES
        )
    secret = tmp_path / "secret"
    secret.write_bytes(b"0123456789abcdef0123")
    secret.chmod(0o600)
    places = ["--config-dir", str(tmp_path), "--node", "alpha", "--state-dir", str(tmp_path / "s")]
    done = subprocess.run(
        [sys.executable, "-m", "tandem.engine.cli", "node", "web=primary", "db=primary", *places],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert all(line.startswith("tandem: error: ") for line in lines), lines
    assert any(f"both replicate {tmp_path}" in line for line in lines), lines
    assert any("both use port 7400" in line for line in lines), lines
    assert not (tmp_path / "s").exists()  # nothing started, not even its state
