"""A support snapshot: one .zip per node with what support asks for first — configuration
(secrets never: the secret files are left out and secret-like settings blanked), module and
application logs, the state and journal summaries, the failover timeline, versions, kernel and
mount information. `tandem snapshot` and the console's button write the same file."""

from __future__ import annotations

import io
import json
import os
import platform
import re
import subprocess
import time
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

from tandem.engine.api.report import node_report, stream_indexes
from tandem.engine.config.paths import journal_dir, module_dir

SECRET_LIKE = re.compile(r"(?im)^(\s*[\w.-]*(secret|password|token|key)[\w.-]*\s*=\s*).*$")
LOG_NAMES = ("module.log", "module.log.1", "app.log", "app.log.1")
MAX_LOG = 8 << 20
PACKAGES = ("tandem-ha", "pyfuse3", "trio", "cryptography", "starlette", "hypercorn")


def _scrub(text: str) -> str:
    return SECRET_LIKE.sub(r"\1<removed>", text)


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(argv)}: {exc}\n"
    return done.stdout + done.stderr


def _versions() -> str:
    lines = [f"python {platform.python_version()}", f"kernel {platform.release()}"]
    for name in PACKAGES:
        try:
            lines.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join(lines) + "\n"


def _fuse_mounts() -> str:
    try:
        with open("/proc/self/mountinfo") as mounts:
            return "".join(line for line in mounts if "fuse" in line)
    except OSError as exc:
        return f"{exc}\n"


def _journal_summary(state_dir: str, module: str) -> dict[str, Any]:
    summary = {}
    for index in stream_indexes(state_dir, module):
        folder = Path(journal_dir(state_dir, module, index))
        files = sorted(folder.glob("*")) if folder.is_dir() else []
        summary[str(index)] = {
            "files": len(files),
            "bytes": sum(f.stat().st_size for f in files if f.is_file()),
            "names": [f.name for f in files[-20:]],
        }
    return summary


def write_snapshot(
    node: str, state_dir: str, config_dir: str, secret_values: tuple[bytes, ...] = ()
) -> bytes:
    """The zip's bytes. ``secret_values`` are checked absent from every member (a secret
    written into a log by mistake is blanked there too)."""
    when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    top = f"tandem-snapshot-{node}-{when}"
    report, complete = node_report(state_dir, [])
    members: dict[str, bytes] = {}

    def add(name: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        for secret in secret_values:
            for form in (secret, secret.hex().encode()):
                raw = raw.replace(form, b"<removed>")
        members[f"{top}/{name}"] = raw

    add("state.json", json.dumps({"complete": complete, **report}, indent=2))
    timeline = {
        module: (found["failover"] or {}).get("history", [])
        for module, found in report["modules"].items()
    }
    add("failover-timeline.json", json.dumps(timeline, indent=2))
    add("versions.txt", _versions())
    add("system/uname.txt", " ".join(platform.uname()) + "\n")
    add("system/fuse-mounts.txt", _fuse_mounts())
    add("system/addresses.txt", _command(["ip", "-brief", "address"]))
    add("system/disk-usage.txt", _command(["df", "-h"]))
    for toml in sorted(Path(config_dir, "modules").glob("*.toml")):
        add(f"config/modules/{toml.name}", _scrub(toml.read_text(errors="replace")))
    for module in report["modules"]:
        folder = Path(module_dir(state_dir, module))
        for name in LOG_NAMES:
            path = folder / name
            if path.is_file():
                with open(path, "rb") as log:
                    log.seek(max(0, path.stat().st_size - MAX_LOG))
                    add(f"modules/{module}/{name}", log.read())
        add(f"modules/{module}/journals.json", json.dumps(_journal_summary(state_dir, module)))
    if os.path.exists("/run/systemd/system"):
        add("system/journal.txt", _command(["journalctl", "-t", "tandem", "-n", "5000", "-q"]))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def snapshot_name(node: str) -> str:
    return f"tandem-snapshot-{node}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.zip"
