"""Keeping a copy's own changes aside (`tandem.engine.replica.aside`): only the named paths,
symlinks as symlinks and never followed (a symlinked parent does not lead outside the copy),
deleted paths named in the report, and nothing written when the disk lacks room."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tandem.engine.replica import aside
from tandem.engine.replica.aside import AsideShort, keep_aside


def _copy(tmp_path: Path) -> int:
    root = tmp_path / "copy"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / "dir" / "sub" / "file").write_bytes(b"mine" * 1000)
    (root / "other").write_text("not changed here")
    os.symlink("/etc/passwd", root / "link")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("outside the copy")
    os.symlink(str(outside), root / "escape")
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY)


def test_only_the_named_paths_are_kept_with_a_report(tmp_path: Path) -> None:
    fd = _copy(tmp_path)
    try:
        paths = [b"dir/sub/file", b"link", b"gone", b"escape/secret", b"dir"]
        target = Path(keep_aside(fd, paths, str(tmp_path / "aside"), "a test", "demo-0"))
    finally:
        os.close(fd)
    assert target.parent == tmp_path / "aside" and target.name.endswith("-demo-0")
    assert (target / "dir" / "sub" / "file").read_bytes() == b"mine" * 1000
    assert os.readlink(target / "link") == "/etc/passwd"  # kept as a link, not followed
    assert not (target / "other").exists()
    assert not (target / "escape").exists()  # a symlinked parent leads nowhere
    report = (target / "REPORT.txt").read_text()
    assert "a test" in report and "gone: not in this copy" in report
    assert "dir/sub/file: file, 4000 bytes" in report and "escape/secret: not in" in report


def test_a_second_keeping_goes_to_its_own_directory(tmp_path: Path) -> None:
    fd = _copy(tmp_path)
    try:
        first = keep_aside(fd, [b"other"], str(tmp_path / "aside"), "one", "x")
        second = keep_aside(fd, [b"other"], str(tmp_path / "aside"), "two", "x")
    finally:
        os.close(fd)
    assert first != second and (Path(second) / "other").exists()


def test_a_short_disk_keeps_nothing_and_says_how_much_is_needed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = _copy(tmp_path)
    monkeypatch.setattr(aside, "_free_bytes", lambda _: aside.ASIDE_MARGIN + 100)
    try:
        with pytest.raises(AsideShort, match=r"need 0 MiB .* nothing is overwritten"):
            keep_aside(fd, [b"dir/sub/file"], str(tmp_path / "aside"), "why", "x")
    finally:
        os.close(fd)
    assert list((tmp_path / "aside").iterdir()) == []


def test_a_path_climbing_out_is_refused(tmp_path: Path) -> None:
    fd = _copy(tmp_path)
    try:
        target = Path(keep_aside(fd, [b"../outside/secret"], str(tmp_path / "aside"), "w", "x"))
    finally:
        os.close(fd)
    assert "../outside/secret: not in this copy" in (target / "REPORT.txt").read_text()
    assert not list(target.rglob("secret"))
