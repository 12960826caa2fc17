"""The reintegration journal: where this node's copy may differ from its peer's.

Every change is recorded *before* the filesystem makes it (see `tandem.fsdriver.change`), as
one small append to a segment file. While the peer keeps up, segments are retired as soon as the
peer has acknowledged every mutation they cover, so the journal stays small. While the node is
alone (or its copy was never compared), nothing is retired: the segments name every path and
byte range the returning peer needs, and only those are sent.

When the journal can be trusted (`History.complete`):
- it was written by this boot of this machine, or the previous run closed it cleanly. Records
  reach the page cache before the change does, so a killed process loses none; a power cut can
  lose unsynced records while the data they describe reached the disk, so after an unclean
  reboot the journal is not trusted and the next resync compares everything by hashes;
- it exists at all (a node's first synchronization compares everything);
- it never overflowed (bounded disk: past `Limits.max_records` held records it says so and stops).

A record: ``u32 length | u32 crc32 | u8 kind | u64 offset | u64 length | u16 | path | u16 |
other``. A torn or corrupt record ends the segment: it can only be the last one written.
"""

from __future__ import annotations

import bisect
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from tandem.fsdriver.change import NAMESPACE_MOVES, UNBOUNDED, Change, ChangeKind
from tandem.fsdriver.syscall import fsync_directory

log = logging.getLogger(__name__)

_FRAME = struct.Struct("<II")
_FIXED = struct.Struct("<BQQH")
_OTHER = struct.Struct("<H")
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
BOOT_ID_VARIABLE = "TANDEM_BOOT_ID"  # tests simulate a reboot with it
SEGMENT_SUFFIX = ".seg"

# journal-only record kinds (after ChangeKind's values)
HEADER = 100  # path: JSON {"boot": ..., "version": 1, "generation": the base of its records}
DONE = 101  # offset: the ChangeKind of the namespace move that succeeded; path, other: its names
ALONE = 102  # path: why replication stopped
UNKNOWN = 103  # path: why tracking stopped being exact
CLOSED = 104  # the process stopped cleanly
SYNC_POINT = 105  # offset: a token; what follows is newer than the resync being completed
SYNCED = 106  # offset: the confirmed sync point's token; path: the generation both copies share
RECEIVING = 107  # this copy is being written by a peer's stream (a secondary's journal)


def current_boot_id() -> str:
    override = os.environ.get(BOOT_ID_VARIABLE)
    if override:
        return override
    with open(BOOT_ID_FILE, encoding="ascii") as source:
        return source.read().strip()


@dataclass(frozen=True)
class Limits:
    max_ranges_per_path: int = 65_536  # beyond: the file is compared by hashes (one record)
    max_remembered_ranges: int = 500_000  # beyond: forget what was recorded (more records)
    max_records: int = 8_000_000  # held records (~0.5 GiB) beyond which tracking gives up


@dataclass
class History:
    """What the journal says since the copies were last known equal."""

    changes: list[Change] = field(default_factory=list)
    committed: set[int] = field(default_factory=set)  # indices of namespace moves known done
    complete: bool = True
    why_incomplete: str = ""
    alone_reasons: list[str] = field(default_factory=list)
    generation: str = ""  # the copies' shared state the changes start from ("": none known)
    served_alone: bool = False  # changes were made (and acknowledged) while alone

    def distrust(self, why: str) -> None:
        if self.complete:
            self.complete = False
            self.why_incomplete = why


def encode_record(
    kind: int, path: bytes = b"", other: bytes = b"", offset: int = 0, length: int = 0
) -> bytes:
    payload = b"".join(
        (_FIXED.pack(kind, offset, length, len(path)), path, _OTHER.pack(len(other)), other)
    )
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def decode_records(data: bytes) -> tuple[list[tuple[int, bytes, bytes, int, int]], bool]:
    """The records of a segment, and whether it ended cleanly (False: torn or corrupt tail)."""
    records: list[tuple[int, bytes, bytes, int, int]] = []
    position = 0
    while position < len(data):
        if position + _FRAME.size > len(data):
            return records, False
        size, crc = _FRAME.unpack_from(data, position)
        payload = data[position + _FRAME.size : position + _FRAME.size + size]
        if len(payload) != size or zlib.crc32(payload) != crc or size < _FIXED.size + 2:
            return records, False
        kind, offset, length, path_size = _FIXED.unpack_from(payload)
        path = payload[_FIXED.size : _FIXED.size + path_size]
        (other_size,) = _OTHER.unpack_from(payload, _FIXED.size + path_size)
        other = payload[_FIXED.size + path_size + 2 : _FIXED.size + path_size + 2 + other_size]
        if len(path) != path_size or len(other) != other_size:
            return records, False
        records.append((kind, path, other, offset, length))
        position += _FRAME.size + size
    return records, True


class _Coverage:
    """Byte ranges already recorded per path, so rewriting the same blocks adds no records.
    Only an optimisation: forgetting it costs records, never correctness."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._ranges: dict[bytes, list[tuple[int, int]]] = {}
        self._count = 0  # ranges remembered over all paths (bounded memory)
        self._said: set[tuple[int, bytes]] = set()

    def clear(self) -> None:
        self._ranges.clear()
        self._said.clear()
        self._count = 0

    def covers(self, path: bytes, start: int, end: int) -> bool:
        ranges = self._ranges.get(path)
        if not ranges:
            return False
        index = bisect.bisect_right(ranges, (start, UNBOUNDED)) - 1
        return index >= 0 and ranges[index][0] <= start and end <= ranges[index][1]

    def add(self, path: bytes, start: int, end: int) -> bool:
        """Remember [start, end); True when the path now has too many ranges to keep."""
        if self._count >= self._limits.max_remembered_ranges:
            self.clear()
        ranges = self._ranges.setdefault(path, [])
        self._count -= len(ranges)
        index = bisect.bisect_left(ranges, (start, start))
        # merge with touching neighbours on both sides
        if index > 0 and ranges[index - 1][1] >= start:
            index -= 1
            start = ranges[index][0]
            end = max(end, ranges[index][1])
            del ranges[index]
        while index < len(ranges) and ranges[index][0] <= end:
            end = max(end, ranges[index][1])
            del ranges[index]
        ranges.insert(index, (start, end))
        self._count += len(ranges)
        return len(ranges) > self._limits.max_ranges_per_path

    def whole(self, path: bytes) -> None:
        self._count -= len(self._ranges.get(path, ())) - 1
        self._ranges[path] = [(0, UNBOUNDED)]

    def said(self, kind: int, path: bytes) -> bool:
        if (kind, path) in self._said:
            return True
        self._said.add((kind, path))
        return False


class ChangeJournal:
    """A `ChangeRecorder` writing segment files in ``directory`` (created if missing)."""

    def __init__(self, directory: str | os.PathLike[str], *, limits: Limits | None = None) -> None:
        self.directory = Path(directory)
        self._limits = limits or Limits()
        self._boot = current_boot_id()
        existed = self.directory.is_dir() and any(self._segment_paths())
        self.directory.mkdir(parents=True, exist_ok=True)
        self._coverage = _Coverage(self._limits)
        self._closed: list[tuple[Path, int | None]] = []  # (segment, label); None: never retire
        self._held_records = 0
        self._given_up = False
        self._sync_segment: Path | None = None
        inherited = read_history(self.directory, self._boot) if existed else None
        # every segment's header names the generation its records start from: retiring the
        # segment that confirmed it must not forget what both copies share
        self._generation = inherited.generation if inherited is not None else ""
        for segment in self._segment_paths():
            self._closed.append((segment, None))
        # keep holding whatever an earlier run left: it is history until a resync completes
        self._hold = bool(self._closed)
        self._number = self._next_number()
        self._fd = -1
        self._open_segment()
        if inherited is None:
            self._give_up("no journal yet: the first synchronization compares everything")
        elif not inherited.complete:
            self._give_up(inherited.why_incomplete)

    # -- segments ---------------------------------------------------------------------------

    def _segment_paths(self) -> list[Path]:
        return sorted(self.directory.glob("*" + SEGMENT_SUFFIX))

    def _next_number(self) -> int:
        numbers = [int(p.stem) for p in self._segment_paths() if p.stem.isdigit()]
        return max(numbers, default=0) + 1

    def _open_segment(self) -> None:
        path = self.directory / f"{self._number:012d}{SEGMENT_SUFFIX}"
        self._current = path
        self._current_records = 0
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        header = {"boot": self._boot, "version": 1, "generation": self._generation}
        self._append(encode_record(HEADER, json.dumps(header).encode()))
        # the segment's name must survive a crash, or its records would
        fsync_directory(self.directory)

    def _append(self, record: bytes) -> None:
        try:
            os.write(self._fd, record)
        except OSError as exc:
            # the change is refused with this error: say why, or the operator sees an
            # application failing on a filesystem with room to spare
            log.error(
                "the journal in %s cannot record a change (%s): changes are refused until it can",
                self.directory,
                exc.strerror,
            )
            raise

    def checkpoint(self, label: int) -> None:
        """Close the current segment: every mutation it covers has a sequence number <= label,
        so it may go once the peer acknowledged `label`."""
        if self._current_records:
            self._rotate(label)

    def _rotate(self, label: int | None) -> None:
        os.close(self._fd)
        self._closed.append((self._current, None if self._hold or label is None else label))
        self._number += 1
        self._open_segment()

    def retire(self, acknowledged: int) -> None:
        if self._hold:
            return
        keep = []
        for segment, label in self._closed:
            if label is not None and label <= acknowledged:
                segment.unlink(missing_ok=True)
            else:
                keep.append((segment, label))
        if len(keep) != len(self._closed):
            self._coverage.clear()  # the ranges it remembers may have been in retired segments
        self._closed = keep

    # -- state ------------------------------------------------------------------------------

    @property
    def holding(self) -> bool:
        """True while the journal keeps everything (alone, or a resync is owed)."""
        return self._hold

    @property
    def complete(self) -> bool:
        return not self._given_up

    def go_alone(self, reason: str) -> None:
        self._hold = True
        self._closed = [(segment, None) for segment, _ in self._closed]
        self._append(encode_record(ALONE, reason.encode()))

    def sync_point(self) -> int:
        """Mark where a resync starts mirroring: what follows is covered by the mirror itself,
        what precedes by the resync. Returns the token `resynced` takes; the point starts a
        segment of its own, so that confirming it can drop whole files."""
        self._rotate(None)
        token = int.from_bytes(os.urandom(8), "big") >> 1  # unique across runs of the journal
        self._append(encode_record(SYNC_POINT, offset=token))
        self._sync_segment = self._current
        return token

    def resynced(self, token: int, label: int, generation: str) -> None:
        """The peer confirmed its copy equals ours as of sync point `token` (the copies now
        share `generation`); mutations up to `label` were submitted. History before the sync
        point is obsolete; what came after stays until the peer acknowledges `label`."""
        if self._sync_segment is None:
            raise RuntimeError("resynced without a sync point")
        self._append(encode_record(SYNCED, generation.encode(), offset=token))
        self._hold = False
        self._generation = generation
        self._rotate(label)
        keep: list[tuple[Path, int | None]] = []
        for segment, _ in self._closed:
            if segment.name < self._sync_segment.name:
                segment.unlink(missing_ok=True)
            else:
                keep.append((segment, label))
        self._closed = keep
        self._sync_segment = None
        self._given_up = False
        self._held_records = 0
        self._coverage.clear()

    def _give_up(self, why: str) -> None:
        if not self._given_up:
            log.warning(
                "change tracking is not exact (%s): the next resync compares by hashes", why
            )
        self._given_up = True
        self._hold = True
        self._append(encode_record(UNKNOWN, why.encode()))

    def close(self) -> None:
        if self._fd < 0:
            return
        try:
            self._append(encode_record(CLOSED))
            os.fsync(self._fd)
        except OSError as exc:
            # without the mark the journal reads as a crash of this boot: still trusted
            log.warning("could not mark the journal closed cleanly: %s", exc.strerror)
        finally:
            os.close(self._fd)
            self._fd = -1

    # -- ChangeRecorder ---------------------------------------------------------------------

    def intend(self, change: Change) -> None:
        if self._given_up:
            return
        kind = change.kind
        if kind == ChangeKind.WRITE:
            start, end = change.offset, change.offset + change.length
            if self._coverage.covers(change.path, start, end):
                return
            if self._coverage.add(change.path, start, end):
                # listing every range would cost more than comparing the file: say so once
                self._coverage.whole(change.path)
                change = Change(ChangeKind.SCATTERED, change.path)
        elif kind == ChangeKind.RESIZE:
            if self._coverage.covers(change.path, change.offset, UNBOUNDED):
                return
            self._coverage.add(change.path, change.offset, UNBOUNDED)
        elif kind in (ChangeKind.METADATA, ChangeKind.SHARED):
            # once said, saying it again adds nothing (and must not cost every write a record)
            if self._coverage.said(kind, change.path):
                return
        else:
            # names move or vanish: what was remembered under them no longer holds
            self._coverage.clear()
        self._record(
            encode_record(change.kind, change.path, change.other, change.offset, change.length)
        )

    def done(self, change: Change) -> None:
        if self._given_up or change.kind not in NAMESPACE_MOVES:
            return
        self._record(encode_record(DONE, change.path, change.other, int(change.kind)))

    def _record(self, record: bytes) -> None:
        self._append(record)
        self._current_records += 1
        if self._hold:
            self._held_records += 1
            if self._held_records > self._limits.max_records:
                self._give_up(f"more than {self._limits.max_records} changes while alone")

    # -- reading ----------------------------------------------------------------------------

    def read_history(self, until: int | None = None) -> History:
        return read_history(self.directory, until=until)


def read_history(directory: Path, boot: str | None = None, *, until: int | None = None) -> History:
    """What the segments in ``directory`` say since the last confirmed resync, oldest first.

    With ``boot`` (only when a run opens the journal: later runs trust what it then recorded),
    a last run that ended without a clean stop under another boot makes the history incomplete.
    With ``until`` (a sync point's token): only what precedes that sync point, which is what a
    resync starting there must settle; what follows it is mirrored, and replaying a move the
    stream already made would move whatever has taken the name since.
    """
    segments = sorted(directory.glob("*" + SEGMENT_SUFFIX))
    if not segments:
        history = History()
        history.distrust("no journal: nothing says where the copies differ")
        return history
    records: list[tuple[int, bytes, bytes, int, int]] = []
    headers_ok = True
    last_boot = None
    base_generation = None  # what the oldest segment's records start from
    for segment in segments:
        found, intact = decode_records(segment.read_bytes())
        if not found or found[0][0] != HEADER:
            headers_ok = False
            continue
        try:
            header = json.loads(found[0][1])
            last_boot = header["boot"]
            if base_generation is None:
                base_generation = str(header.get("generation", ""))
        except (ValueError, KeyError, TypeError, AttributeError):
            headers_ok = False
        if not intact:
            log.info("journal segment %s ends with a torn record (ignored)", segment.name)
        records.extend(found[1:])
    # only what follows the sync point of the last confirmed resync still matters
    confirmed = {
        offset: path.decode(errors="replace")
        for kind, path, _, offset, _ in records
        if kind == SYNCED
    }
    start = 0
    for index, (kind, _, _, offset, _) in enumerate(records):
        if kind == SYNC_POINT and offset in confirmed:
            start = index + 1
    if start:
        history = History(generation=confirmed.get(records[start - 1][3], ""))
    else:
        history = History(generation=base_generation or "")
    if not headers_ok:
        history.distrust("a journal segment has no readable header")
    if until is not None:
        for index in range(start, len(records)):
            if records[index][0] == SYNC_POINT and records[index][3] == until:
                records = records[:index]
                break
    pending: dict[tuple[int, bytes, bytes], list[int]] = {}
    alone = False
    for kind, path, other, offset, length in records[start:]:
        if kind == UNKNOWN:
            history.distrust(path.decode(errors="replace"))
        elif kind == ALONE:
            history.alone_reasons.append(path.decode(errors="replace"))
            alone = True
        elif kind == DONE:
            waiting = pending.get((offset, path, other))
            if waiting:
                history.committed.add(waiting.pop(0))
        elif kind in ChangeKind._value2member_map_:
            history.served_alone = history.served_alone or alone
            change_kind = ChangeKind(kind)
            history.changes.append(Change(change_kind, path, other, offset, length))
            if change_kind in NAMESPACE_MOVES:
                pending.setdefault((kind, path, other), []).append(len(history.changes) - 1)
        elif kind not in (CLOSED, HEADER, SYNC_POINT, SYNCED, RECEIVING):
            history.distrust(f"a journal record of unknown kind {kind}")
    clean_close = bool(records) and records[-1][0] == CLOSED
    if boot is not None and not clean_close and last_boot != boot:
        history.distrust("the machine restarted without a clean stop (records may be lost)")
    return history


class SecondaryJournal:
    """The journal directory of a copy that a peer writes (this node is secondary): it says which
    generation the copy shares with the primary, and keeps what this node changed when it last
    served, until a resync confirms the copy equals the primary's.

    While a stream is applied, the directory's newest segment has no CLOSED record: after a power
    cut (applied data may be lost from the page cache) the copy is then not trusted.
    """

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._boot = current_boot_id()
        self._fd = -1

    def history(self) -> History:
        """What this copy holds beyond the generation it shares (its own changes)."""
        return read_history(self.directory, self._boot)

    def begin_receiving(self) -> None:
        self._close_segment()
        self._fd = self._new_segment([encode_record(RECEIVING)])

    def adopt_generation(self, generation: str) -> None:
        """The copy now equals the primary's at `generation` (the caller made it durable)."""
        self._close_segment()
        token = int.from_bytes(os.urandom(8), "big") >> 1
        older = sorted(self.directory.glob("*" + SEGMENT_SUFFIX))
        records = [
            encode_record(SYNC_POINT, offset=token),
            encode_record(SYNCED, generation.encode(), offset=token),
            encode_record(RECEIVING),
        ]
        self._fd = self._new_segment(records)
        for segment in older:
            segment.unlink(missing_ok=True)

    def end_receiving(self) -> None:
        self._close_segment()

    def _close_segment(self) -> None:
        if self._fd < 0:
            return
        try:
            os.write(self._fd, encode_record(CLOSED))
            os.fsync(self._fd)
        finally:
            os.close(self._fd)
            self._fd = -1

    def _new_segment(self, records: list[bytes]) -> int:
        numbers = [
            int(p.stem) for p in self.directory.glob("*" + SEGMENT_SUFFIX) if p.stem.isdigit()
        ]
        path = self.directory / f"{max(numbers, default=0) + 1:012d}{SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        header = json.dumps({"boot": self._boot, "version": 1}).encode()
        os.write(fd, encode_record(HEADER, header) + b"".join(records))
        os.fsync(fd)
        fsync_directory(self.directory)
        return fd
