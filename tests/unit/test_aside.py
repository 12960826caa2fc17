"""Keeping a copy's own changes aside (`tandem.engine.replica.aside`): only the named paths (or
only what a resync changes), symlinks as symlinks and never followed (a symlinked parent does
not lead outside the copy), deleted paths named in the report, nothing written when the disk
lacks room."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from tandem.engine.protocol.repairs import Ensure, RemoveTree
from tandem.engine.replica import aside
from tandem.engine.replica.aside import AsideKeeper, AsideShort, keep_aside, request_keeping
from tandem.fsdriver.mutation import Write


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


def _tree(tmp_path: Path) -> int:
    root = tmp_path / "copy"
    (root / "old" / "deep").mkdir(parents=True)
    (root / "old" / "deep" / "f").write_text("under a removed directory")
    (root / "same").write_text("identical on both copies")
    (root / "mine").write_text("only this copy's version")
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY)


def test_what_a_resync_changes_is_kept_first_and_only_that(tmp_path: Path) -> None:
    """The node asked (a split brain's yielding side): the resync's items name what differs;
    each is kept before it is changed, a removed directory with all under it, nothing else."""
    fd = _tree(tmp_path)
    marker = str(tmp_path / "keep-aside.json")
    request_keeping(marker, "split brain: b yields")
    try:
        keeper = AsideKeeper.resume(marker, fd, str(tmp_path / "aside"), "demo-0")
        assert keeper is not None
        for item in (
            Write(b"mine", 0, b"the primary's"),
            Write(b"mine", 4, b"again"),  # kept once, before the first change
            RemoveTree(b"old"),
            Ensure(b"new", stat.S_IFREG | 0o644, 0, 0),  # nothing here before: nothing kept
            Ensure(b".", stat.S_IFDIR | 0o755, 0, 0),  # a directory's mode: no data lost
        ):
            keeper.before(item)
        target = Path(keeper.finish())
    finally:
        os.close(fd)
    assert (target / "mine").read_text() == "only this copy's version"
    assert (target / "old" / "deep" / "f").read_text() == "under a removed directory"
    assert not (target / "same").exists() and not (target / "new").exists()
    report = (target / "REPORT.txt").read_text()
    assert "split brain: b yields" in report and "mine: file, 24 bytes" in report
    assert not os.path.exists(marker)  # the request is done
    assert sorted(p.name for p in target.iterdir()) == ["REPORT.txt", "mine", "old"]


def test_a_resync_broken_off_resumes_into_the_same_place_without_copying_again(
    tmp_path: Path,
) -> None:
    fd = _tree(tmp_path)
    marker = str(tmp_path / "keep-aside.json")
    request_keeping(marker, "no history")
    try:
        first = AsideKeeper.resume(marker, fd, str(tmp_path / "aside"), "x")
        assert first is not None
        first.before(Write(b"mine", 0, b"x"))
        (tmp_path / "copy" / "mine").write_text("the primary's version by now")
        again = AsideKeeper.resume(marker, fd, str(tmp_path / "aside"), "x")  # a new session
        assert again is not None and again.target == first.target
        again.before(Write(b"mine", 0, b"y"))
        target = Path(again.finish())
    finally:
        os.close(fd)
    assert (target / "mine").read_text() == "only this copy's version"
    assert AsideKeeper.resume(marker, 0, str(tmp_path / "aside"), "x") is None  # not asked


def test_a_short_disk_stops_the_resync_before_it_replaces_what_it_could_not_keep(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fd = _tree(tmp_path)
    marker = str(tmp_path / "keep-aside.json")
    request_keeping(marker, "why")
    monkeypatch.setattr(aside, "_free_bytes", lambda _: aside.ASIDE_MARGIN)
    try:
        keeper = AsideKeeper.resume(marker, fd, str(tmp_path / "aside"), "x")
        assert keeper is not None
        with pytest.raises(AsideShort, match="cannot keep mine aside"):
            keeper.before(Write(b"mine", 0, b"x"))
    finally:
        os.close(fd)
    assert os.path.exists(marker)  # still asked: the next session tries again
