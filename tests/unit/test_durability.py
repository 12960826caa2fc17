"""What a durable secondary syncs per batch: the touched files and directories, or everything
when a name moved (a path may then name another object)."""

from __future__ import annotations

import os
from pathlib import Path

from tandem.engine.protocol.repairs import Ensure
from tandem.engine.replica.durability import MAX_SEPARATE_SYNCS, make_durable, sync_targets
from tandem.fsdriver.mutation import (
    CreateFile,
    MakeHardLink,
    MakeNode,
    Rename,
    SetAttributes,
    Stamp,
    Unlink,
    Write,
)


def test_writes_sync_their_files_and_namespace_changes_their_directories() -> None:
    targets = sync_targets(
        [
            Write(b"d/f", 0, b"x", (Stamp(b"d/f", 1, 2),)),
            CreateFile(b"d/g", 0o644, 0, 0, (Stamp(b"d", 1, 2),)),
            MakeHardLink(b"d/f", b"e/h"),
            Unlink(b"top"),
            SetAttributes(b"d/f", mode=0o600),
        ]
    )
    assert targets is not None
    assert targets.files == {b"d/f", b"d"}
    assert targets.directories == {b"d", b"e", b"."}


def test_moved_names_or_too_many_targets_sync_the_whole_filesystem() -> None:
    assert sync_targets([Write(b"a", 0, b"x"), Rename(b"a", b"b", 0)]) is None
    assert sync_targets([Ensure(b"a", 0o100644, 0, 0, 0, b"", False)]) is None
    many = [Write(b"f%d" % i, 0, b"x") for i in range(MAX_SEPARATE_SYNCS + 1)]
    assert sync_targets(many) is None
    assert sync_targets(many[:MAX_SEPARATE_SYNCS]) is not None


def test_syncing_skips_what_a_later_change_removed_and_never_opens_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "kept").write_bytes(b"data")
    os.mkfifo(tmp_path / "d" / "pipe")  # opening it read-only would block: the test would hang
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        make_durable(
            root_fd,
            [
                Write(b"d/kept", 0, b"data"),
                Write(b"d/gone", 0, b"x"),
                Unlink(b"d/gone"),
                MakeNode(b"d/pipe", 0o010644, 0, 0, 0, (Stamp(b"d/pipe", 1, 2),)),
            ],
        )
    finally:
        os.close(root_fd)
