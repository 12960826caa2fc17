"""The reintegration journal: records, bounds, retirement, and when it may be trusted."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.engine.reintegration import journal as journal_module
from tandem.engine.reintegration.journal import (
    ChangeJournal,
    Limits,
    decode_records,
    encode_record,
    read_history,
)
from tandem.engine.reintegration.plan import Need, plan_from_history
from tandem.fsdriver.change import Change, ChangeKind

W, RESIZE, META, CREATE, REMOVE, RENAME = (
    ChangeKind.WRITE,
    ChangeKind.RESIZE,
    ChangeKind.METADATA,
    ChangeKind.CREATE,
    ChangeKind.REMOVE,
    ChangeKind.RENAME,
)


@pytest.fixture(autouse=True)
def boot(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(journal_module.BOOT_ID_VARIABLE, "boot-1")


def in_sync(directory: Path, limits: Limits | None = None) -> ChangeJournal:
    """A journal whose copy was just confirmed equal to the peer's."""
    journal = ChangeJournal(directory, limits=limits)
    journal.resynced(journal.sync_point(), 0, "g0")
    return journal


def write(path: bytes, offset: int, length: int) -> Change:
    return Change(W, path, offset=offset, length=length)


def test_records_round_trip_and_a_torn_tail_is_ignored() -> None:
    records = encode_record(W, b"a/b", b"", 4096, 512) + encode_record(RENAME, b"x", b"y\xff")
    assert decode_records(records) == (
        [(W, b"a/b", b"", 4096, 512), (RENAME, b"x", b"y\xff", 0, 0)],
        True,
    )
    torn = records + encode_record(W, b"c", b"", 0, 1)[:-3]
    assert decode_records(torn)[0] == decode_records(records)[0]
    assert decode_records(torn)[1] is False
    corrupt = bytearray(records)
    corrupt[12] ^= 0xFF  # inside the first payload: its checksum fails, nothing after counts
    assert decode_records(bytes(corrupt)) == ([], False)


def test_a_first_journal_is_not_trusted_until_a_resync_completes(tmp_path: Path) -> None:
    journal = ChangeJournal(tmp_path / "j")
    history = journal.read_history()
    assert not history.complete and "first synchronization" in history.why_incomplete
    assert journal.holding
    journal.intend(write(b"f", 0, 10))
    journal.resynced(journal.sync_point(), 5, "g1")
    journal.intend(write(b"g", 0, 10))
    history = journal.read_history()
    assert history.complete
    assert history.changes == [write(b"g", 0, 10)]  # before the sync point: obsolete


def test_changes_after_the_sync_point_survive_the_resync(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.go_alone("peer lost")
    journal.intend(write(b"old", 0, 1))
    token = journal.sync_point()
    journal.intend(write(b"in-flight", 0, 1))  # submitted after the barrier: maybe unacked
    journal.resynced(token, 7, "g1")
    assert journal.read_history().changes == [write(b"in-flight", 0, 1)]
    journal.retire(6)
    assert journal.read_history().changes == [write(b"in-flight", 0, 1)]
    journal.retire(7)
    assert journal.read_history().changes == []


def test_rewriting_the_same_blocks_adds_no_records(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.go_alone("peer lost")
    for _ in range(3):
        journal.intend(write(b"f", 0, 4096))
        journal.intend(write(b"f", 4096, 4096))
        journal.intend(write(b"f", 100, 200))  # inside what is already recorded
        journal.intend(Change(META, b"f"))
    journal.intend(write(b"f", 8192, 10))
    assert journal.read_history().changes == [
        write(b"f", 0, 4096),
        write(b"f", 4096, 4096),
        Change(META, b"f"),
        write(b"f", 8192, 10),
    ]


def test_a_rename_makes_the_journal_record_again(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.go_alone("peer lost")
    journal.intend(write(b"a", 0, 10))
    rename = Change(RENAME, b"b", b"a")
    journal.intend(rename)
    journal.done(rename)
    journal.intend(write(b"a", 0, 10))  # a different file now bears the name
    history = journal.read_history()
    assert history.changes == [write(b"a", 0, 10), rename, write(b"a", 0, 10)]
    assert history.committed == {1}


def test_a_namespace_move_without_its_done_record_is_uncertain(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.intend(Change(RENAME, b"x", b"y"))  # the process died before the rename returned
    history = journal.read_history()
    assert history.changes == [Change(RENAME, b"x", b"y")] and history.committed == set()


def test_too_many_ranges_in_one_file_have_it_compared_by_hashes(tmp_path: Path) -> None:
    journal = in_sync(tmp_path, Limits(max_ranges_per_path=4))
    journal.go_alone("peer lost")
    for block in range(0, 20, 2):
        journal.intend(write(b"big", block * 4096, 4096))
    changes = journal.read_history().changes
    assert changes[-1] == Change(ChangeKind.SCATTERED, b"big")
    assert len(changes) == 5  # four ranges, then "compare it" in place of the fifth
    journal.intend(write(b"big", 10 << 30, 4096))
    assert len(journal.read_history().changes) == 5
    work = plan_from_history(journal.read_history()).work[b"big"]
    assert work.need & Need.ENTRY  # compared by hashes: only the differing blocks are sent


def test_remembered_ranges_are_bounded_over_all_paths(tmp_path: Path) -> None:
    journal = in_sync(tmp_path, Limits(max_remembered_ranges=8))
    journal.go_alone("peer lost")
    for index in range(20):
        journal.intend(write(b"f%d" % index, 0, 4096))
    assert journal._coverage._count <= 8
    journal.intend(write(b"f19", 0, 4096))  # still remembered: no new record
    journal.intend(write(b"f0", 0, 4096))  # forgotten: recorded again (costs a record only)
    changes = journal.read_history().changes
    assert len(changes) == 21 and changes[-1] == write(b"f0", 0, 4096)


def test_held_records_are_bounded(tmp_path: Path) -> None:
    journal = in_sync(tmp_path, Limits(max_records=10))
    journal.go_alone("peer lost")
    for index in range(50):
        journal.intend(Change(CREATE, b"f%d" % index))
    history = journal.read_history()
    assert not history.complete and "more than 10 changes" in history.why_incomplete
    assert len(history.changes) == 11  # nothing more is written once tracking gave up
    assert history.alone_reasons == ["peer lost"]


def test_mirrored_segments_retire_once_acknowledged(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.retire(0)
    journal.intend(Change(CREATE, b"a"))
    journal.checkpoint(3)
    journal.intend(Change(CREATE, b"b"))
    journal.checkpoint(5)
    journal.intend(Change(CREATE, b"c"))
    journal.retire(4)
    assert [c.path for c in journal.read_history().changes] == [b"b", b"c"]
    journal.retire(5)
    assert [c.path for c in journal.read_history().changes] == [b"c"]
    segments = list(tmp_path.glob("*.seg"))
    assert len(segments) == 1  # only the open one


def test_a_resync_plans_only_what_precedes_its_sync_point(tmp_path: Path) -> None:
    """Found by the loopback property test: a rename mirrored during the resync was also
    replayed by it, moving the file that had taken the old name since (a hard link broke)."""
    journal = in_sync(tmp_path)
    journal.go_alone("peer lost")
    journal.intend(write(b"alone", 0, 1))
    token = journal.sync_point()  # the peer is back: from here on the stream mirrors
    journal.intend(Change(RENAME, b"x", b"y"))
    assert journal.read_history(until=token).changes == [write(b"alone", 0, 1)]
    assert journal.read_history().changes == [write(b"alone", 0, 1), Change(RENAME, b"x", b"y")]


def test_going_alone_keeps_everything_not_yet_acknowledged(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.retire(0)
    journal.intend(Change(CREATE, b"sent"))
    journal.checkpoint(9)
    journal.go_alone("peer lost")
    journal.retire(100)  # a late acknowledgement must not drop what the resync will need
    journal.intend(Change(CREATE, b"alone"))
    journal.checkpoint(12)
    journal.retire(100)
    assert [c.path for c in journal.read_history().changes] == [b"sent", b"alone"]


@pytest.mark.parametrize(
    ("clean", "same_boot", "trusted"),
    [(True, True, True), (True, False, True), (False, True, True), (False, False, False)],
)
def test_trust_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean: bool, same_boot: bool, trusted: bool
) -> None:
    journal = in_sync(tmp_path)
    journal.go_alone("peer lost")
    journal.intend(write(b"f", 0, 10))
    if clean:
        journal.close()
    # else: the process died; its records are in the page cache, or lost with a power cut
    if not same_boot:
        monkeypatch.setenv(journal_module.BOOT_ID_VARIABLE, "boot-2")
    reopened = ChangeJournal(tmp_path)
    history = reopened.read_history()
    assert history.complete is trusted
    assert write(b"f", 0, 10) in history.changes  # whatever the verdict, nothing is dropped
    assert reopened.holding
    if not trusted:
        assert "restarted without a clean stop" in history.why_incomplete
        # the verdict is written down: a later clean restart does not forget it
        reopened.close()
        assert not ChangeJournal(tmp_path).read_history().complete


def test_an_empty_or_missing_journal_directory_is_not_trusted(tmp_path: Path) -> None:
    assert not read_history(tmp_path).complete
    journal = ChangeJournal(tmp_path / "new")
    journal.close()
    # a clean close of a first journal still owes the first synchronization
    assert not ChangeJournal(tmp_path / "new").read_history().complete


def test_records_after_the_sync_point_survive_rotations_during_the_resync(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.go_alone("peer lost")
    journal.intend(write(b"while-alone", 0, 1))
    token = journal.sync_point()
    journal.intend(write(b"mirrored-1", 0, 1))
    journal.checkpoint(3)  # the periodic checkpoint keeps running while the resync does
    journal.intend(write(b"mirrored-2", 0, 1))
    journal.resynced(token, 9, "g2")
    history = journal.read_history()
    assert history.generation == "g2"
    assert history.changes == [write(b"mirrored-1", 0, 1), write(b"mirrored-2", 0, 1)]


def test_the_shared_generation_outlives_the_retired_segment_that_confirmed_it(
    tmp_path: Path,
) -> None:
    """In sync for a while, every segment acknowledged and retired, then the peer is lost:
    the history still knows what both copies share (else the return compares everything)."""
    journal = in_sync(tmp_path)
    for label in range(1, 4):
        journal.intend(write(b"f", label, 1))
        journal.checkpoint(label)
        journal.retire(label)
    kinds = {r[0] for p in tmp_path.glob("*.seg") for r in decode_records(p.read_bytes())[0]}
    assert journal_module.SYNCED not in kinds  # the record that confirmed "g0" is gone
    journal.go_alone("peer lost")
    journal.intend(write(b"alone", 0, 1))
    journal.close()
    history = ChangeJournal(tmp_path).read_history()
    assert history.complete and history.generation == "g0"
    assert history.changes == [write(b"alone", 0, 1)]


def test_a_sync_point_of_an_earlier_run_does_not_confirm_a_later_one(tmp_path: Path) -> None:
    first = in_sync(tmp_path)
    first.close()
    second = ChangeJournal(tmp_path)
    second.intend(write(b"kept", 0, 1))
    second.sync_point()  # a resync that never completed: history still starts at "g0"
    second.close()
    history = ChangeJournal(tmp_path).read_history()
    assert history.generation == "g0"
    assert write(b"kept", 0, 1) in history.changes


def test_a_secondary_journal_says_its_generation_and_distrusts_a_power_cut(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    primary_once = in_sync(tmp_path)  # this node served once, then crashed with a change
    primary_once.intend(write(b"unacknowledged", 0, 1))
    secondary = journal_module.SecondaryJournal(tmp_path)
    history = secondary.history()
    assert history.complete and history.generation == "g0"
    assert history.changes == [write(b"unacknowledged", 0, 1)]
    secondary.begin_receiving()
    secondary.adopt_generation("g7")
    history = secondary.history()
    assert (history.complete, history.generation, history.changes) == (True, "g7", [])
    monkeypatch.setenv(journal_module.BOOT_ID_VARIABLE, "boot-2")  # power cut while receiving
    assert not journal_module.SecondaryJournal(tmp_path).history().complete
    monkeypatch.setenv(journal_module.BOOT_ID_VARIABLE, "boot-1")
    secondary.end_receiving()
    monkeypatch.setenv(journal_module.BOOT_ID_VARIABLE, "boot-2")  # clean stop, then reboot
    history = journal_module.SecondaryJournal(tmp_path).history()
    assert history.complete and history.generation == "g7"
    # a node that then serves starts from the generation it shares
    assert ChangeJournal(tmp_path).read_history().generation == "g7"


def test_writes_to_a_file_with_several_names_say_so_once(tmp_path: Path) -> None:
    journal = in_sync(tmp_path)
    journal.go_alone("peer lost")
    for _ in range(3):
        journal.intend(Change(ChangeKind.SHARED, b"f"))
        journal.intend(write(b"f", 0, 4096))
    assert journal.read_history().changes == [Change(ChangeKind.SHARED, b"f"), write(b"f", 0, 4096)]
