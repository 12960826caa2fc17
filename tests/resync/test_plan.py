"""From journal history to resync work: ranges follow renames, moves are replayed and compared,
uncertain moves compare both names; and the secondary refuses queries it should not answer."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tandem.engine.protocol.queries import HashQuery
from tandem.engine.protocol.repairs import RENAME_EXCHANGE, LinkIfPresent, Move
from tandem.engine.protocol.results import decode_hashes
from tandem.engine.reintegration.journal import History
from tandem.engine.reintegration.plan import Need, plan_from_history
from tandem.engine.replication.receiver import ApplyError
from tandem.engine.replication.receiver import answer_query as answer
from tandem.fsdriver.change import UNBOUNDED, Change, ChangeKind

W, RESIZE, META = ChangeKind.WRITE, ChangeKind.RESIZE, ChangeKind.METADATA
CREATE, REMOVE, RENAME = ChangeKind.CREATE, ChangeKind.REMOVE, ChangeKind.RENAME


def history(*changes: Change, uncommitted: tuple[int, ...] = ()) -> History:
    moves = {
        i for i, c in enumerate(changes) if c.kind in (RENAME, ChangeKind.EXCHANGE, ChangeKind.LINK)
    }
    return History(changes=list(changes), committed=moves - set(uncommitted))


def test_ranges_merge_and_a_resize_reaches_the_end() -> None:
    plan = plan_from_history(
        history(
            Change(W, b"f", offset=0, length=4096),
            Change(W, b"f", offset=4096, length=4096),
            Change(W, b"f", offset=65536, length=10),
            Change(RESIZE, b"g", offset=100),
            Change(META, b"g"),
        )
    )
    assert plan.work[b"f"].ranges == [(0, 8192), (65536, 65546)]
    assert plan.work[b"f"].need == Need.RANGES
    assert plan.work[b"g"].ranges == [(100, UNBOUNDED)]
    assert plan.work[b"g"].need == Need.RANGES | Need.SIZE | Need.META
    assert plan.moves == []


def test_what_was_written_before_a_rename_is_sent_under_the_new_name() -> None:
    plan = plan_from_history(
        history(
            Change(W, b"d/a", offset=0, length=10),
            Change(W, b"other", offset=0, length=1),
            Change(RENAME, b"d", b"e"),
            Change(W, b"e/a", offset=100, length=10),
        )
    )
    assert plan.moves == [Move(b"d", b"e")]
    assert b"d/a" not in plan.work
    assert plan.work[b"e/a"].ranges == [(0, 10), (100, 110)]
    assert plan.work[b"e"].need & Need.TREE  # the move is replayed, then compared
    assert plan.work[b"d"].need & Need.ENTRY
    assert plan.work[b"other"].ranges == [(0, 1)]


def test_a_move_that_may_not_have_happened_is_compared_under_both_names() -> None:
    plan = plan_from_history(
        history(Change(W, b"a", offset=0, length=1), Change(RENAME, b"a", b"b"), uncommitted=(1,))
    )
    assert plan.moves == []
    assert plan.work[b"a"].need & Need.TREE and plan.work[b"b"].need & Need.TREE


def test_exchange_and_link_replay() -> None:
    plan = plan_from_history(
        history(
            Change(W, b"x", offset=0, length=1),
            Change(ChangeKind.EXCHANGE, b"x", b"y"),
            Change(ChangeKind.LINK, b"y", b"z"),
        )
    )
    assert plan.moves == [Move(b"x", b"y", RENAME_EXCHANGE), LinkIfPresent(b"y", b"z")]
    assert plan.work[b"y"].ranges == [(0, 1)]  # x's data now lives at y
    assert plan.work[b"z"].need & Need.ENTRY


def test_what_was_pending_under_a_removed_path_stays() -> None:
    plan = plan_from_history(
        history(
            Change(CREATE, b"d"),
            Change(CREATE, b"d/f"),
            Change(W, b"d/f", offset=0, length=5),
            Change(REMOVE, b"d/f"),
            Change(REMOVE, b"d"),
            Change(CREATE, b"d2"),
        )
    )
    # the removal may have failed (rmdir of a directory that was not empty)
    assert set(plan.work) == {b"d", b"d/f", b"d2"}
    assert plan.work[b"d"].need == Need.ENTRY
    assert plan.work[b"d/f"].need == Need.ENTRY | Need.RANGES


def test_a_hash_query_asking_for_too_many_hashes_is_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x" * 10)
    root_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ApplyError, match="refused a hash query"):
            answer(root_fd, HashQuery(b"f", 0, 1 << 40, 512), 4)
        with pytest.raises(ApplyError, match="refused a hash query"):
            answer(root_fd, HashQuery(b"f", 0, 4096, 1), 4)
        # one enormous block: a single hash, but a buffer of 2^40 bytes (it ended a session
        # with ENOMEM)
        with pytest.raises(ApplyError, match="refused a hash query"):
            answer(root_fd, HashQuery(b"f", 0, 1 << 40, 1 << 40), 4)
        assert decode_hashes(answer(root_fd, HashQuery(b"f", 0, 4096, 4096), 4), 4).size == 10
    finally:
        os.close(root_fd)
