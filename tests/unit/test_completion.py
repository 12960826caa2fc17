"""The bash completion script `tandem completion bash` prints, run in a real bash: commands,
a command's options, and the modules configured on this node where a module is expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def _complete(tmp_path: Path, *words: str) -> list[str]:
    script = subprocess.run(
        [sys.executable, "-m", "tandem.engine.cli", "completion", "bash"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (tmp_path / "completion.sh").write_text(script)
    line = " ".join(f"'{w}'" for w in words)
    probe = (
        f"source {tmp_path / 'completion.sh'}; COMP_WORDS=(tandem {line}); "
        f"COMP_CWORD={len(words)}; _tandem; printf '%s\\n' \"${{COMPREPLY[@]}}\""
    )
    done = subprocess.run(
        ["bash", "-c", probe],
        capture_output=True,
        text=True,
        env={"TANDEM_CONFIG_DIR": str(tmp_path / "etc"), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return done.stdout.split()


def test_bash_completes_commands_options_and_configured_modules(tmp_path: Path) -> None:
    (tmp_path / "etc" / "modules").mkdir(parents=True)
    for name in ("web", "db"):
        (tmp_path / "etc" / "modules" / f"{name}.toml").write_text("")
    assert _complete(tmp_path, "sw") == ["swap"]
    assert set(_complete(tmp_path, "st")) == {"start", "state", "stop"}
    assert {"web", "db"} <= set(_complete(tmp_path, "swap", ""))
    assert _complete(tmp_path, "prim", "--f") == ["--force"]
    assert "--out" in _complete(tmp_path, "snapshot", "--")
    assert set(_complete(tmp_path, "console", "")) >= {"passwd", "token", "users"}
    assert "web" not in _complete(tmp_path, "console", "")  # no module expected there
