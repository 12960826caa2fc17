from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mountproc import MountProcess

NOBODY = (65534, 65534)
RUNNER = str(Path(__file__).parent / "helpers" / "oprunner.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # CI runs as root; a test that needs root must fail loudly elsewhere, never skip in CI.
    if os.geteuid() != 0:
        for item in items:
            if item.get_closest_marker("root"):
                item.add_marker(pytest.mark.skip(reason="needs root (CI runs as root)"))


@pytest.fixture
def workspace() -> Iterator[Path]:
    """A world-traversable scratch directory (pytest's own tmp_path is 0700, closed to
    the unprivileged users our tests act as)."""
    path = Path(tempfile.mkdtemp(prefix="tandem-test-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_ops(
    root: Path | str,
    ops: list[list[Any]],
    user: tuple[int, int] = (0, 0),
    umask: int = 0o022,
    on: list[str] | None = None,
) -> list[Any]:
    """Run ``ops`` under ``root`` as ``user``; ``on`` prefixes the command (e.g. to run it on
    a lab node)."""
    request = {"root": str(root), "uid": user[0], "gid": user[1], "ops": ops, "umask": umask}
    done = subprocess.run(
        [*(on or []), sys.executable, RUNNER],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, f"op runner failed: {done.stderr}"
    return json.loads(done.stdout)


class Mounted:
    def __init__(self, process: MountProcess) -> None:
        self.process = process
        self.path = process.directory
        self.record = process.record

    def stop(self) -> None:
        code = self.process.stop()
        assert code == 0, f"tandem mount exited {code}: {self.process.log()}"
        log = self.process.log()
        for marker in ("Traceback", " ERROR ", " WARNING ", "unexpected error"):
            assert marker not in log, f"the mount logged {marker.strip()!r}:\n{log}"


def start_mount(directory: Path, record: bool = True, extra: list[str] | None = None) -> Mounted:
    directory.mkdir(exist_ok=True)
    record_path = directory.parent / f"{directory.name}.mutations.jsonl" if record else None
    return Mounted(MountProcess(directory, record_path, extra or []).start())


@pytest.fixture
def mounted(workspace: Path) -> Iterator[Mounted]:
    mount = start_mount(workspace / "mnt")
    try:
        yield mount
    finally:
        if mount.process.process is not None:
            mount.stop()
