"""`tandem verify`: compare the two copies while the application runs, change nothing.

It asks the same questions a full resync asks (listings, then per-block hashes, see
`tandem.engine.reintegration.resync`) and uses the same clock to tell a real difference from one
the stream has not delivered yet: the peer answers a query after applying everything submitted
before it, and this side reads its own copy afterwards, so an object that no mutation touched in
between must look the same on both. Whatever the application did change meanwhile is looked at
again (a few rounds, further apart); an object that keeps changing is reported as not verified,
never as a difference."""

from __future__ import annotations

import logging
import os
import stat
import time
from array import array
from dataclasses import dataclass, field
from typing import Protocol

import trio

from tandem.engine.protocol.queries import HashQuery, ListQuery, Query
from tandem.engine.protocol.results import FOUND, Entry, decode_entries, decode_hashes
from tandem.engine.reintegration.change_clock import ChangeClock
from tandem.engine.reintegration.resync import BLOCK, COMPARE_CHUNK
from tandem.engine.replica.survey import child_path, differing_blocks, open_regular, survey
from tandem.fsdriver.mutation import MakeHardLink, Mutation, Rename
from tandem.native.blockhash import hash_blocks

log = logging.getLogger(__name__)

ROUNDS = 6  # looks at a changing object before calling it not verified
WORKERS = 4
MAX_LISTED = 1000  # differences named in the report (all are counted)


class QueryStream(Protocol):
    async def ask(self, query: Query) -> bytes:
        """Submit a query in stream order and return the peer's whole answer."""

    @property
    def version(self) -> int:
        """The protocol version agreed with the peer (how its answers are laid out)."""


@dataclass
class VerifyReport:
    started: float = field(default_factory=time.monotonic)
    paths_checked: int = 0
    bytes_compared: int = 0
    differences: dict[str, str] = field(default_factory=dict)  # path -> what differs
    difference_count: int = 0
    not_verified: list[str] = field(default_factory=list)  # changed at every look
    finished: bool = False

    def as_dict(self) -> dict[str, object]:
        elapsed = time.monotonic() - self.started
        return {
            "finished": self.finished,
            "identical": self.finished and not self.difference_count and not self.not_verified,
            "paths_checked": self.paths_checked,
            "bytes_compared": self.bytes_compared,
            "elapsed_s": round(elapsed, 3),
            "rate_bytes_s": round(self.bytes_compared / elapsed) if elapsed > 0 else 0,
            "difference_count": self.difference_count,
            "differences": dict(self.differences),
            "not_verified": list(self.not_verified),
        }


@dataclass(frozen=True)
class _Hashes:
    mine: array[int]
    theirs: array[int]
    dirty: set[int] | None  # blocks written while hashed (None: maybe any)
    nlink: int
    our_inode: tuple[int, int]
    their_inode: int


class Verify:
    def __init__(self, root_fd: int, stream: QueryStream, *, workers: int = WORKERS) -> None:
        self._root_fd = root_fd
        self._stream = stream
        self._workers = workers
        self._clock = ChangeClock()
        self._entries_changed: dict[bytes, int] = {}  # directory -> last clock a name in it moved
        self._again: dict[bytes, bool] = {}  # path -> whole (else a directory's attributes)
        self.report = VerifyReport()
        self._paired: dict[int, tuple[int, int]] = {}  # peer's inode -> ours (hard links)
        self._paired_back: dict[tuple[int, int], int] = {}

    def observe(self, mutation: Mutation) -> None:
        """An application mutation entered the stream (same step as the change)."""
        self._clock.observe(mutation)
        match mutation:
            case Rename(old=old, new=new):
                names: tuple[bytes, ...] = (old, new)
            case MakeHardLink(existing=existing, path=path):
                names = (existing, path)
            case _:
                names = (mutation.path,)
        for name in names:
            # a directory's own times and link count move with its entries
            self._entries_changed[name.rpartition(b"/")[0] or b"."] = self._clock.clock

    async def run(self) -> VerifyReport:
        paths = {b".": True}
        for round_number in range(ROUNDS):
            await self._check_all(paths)
            if not self._again:
                break
            paths, self._again = self._again, {}
            if round_number < ROUNDS - 1:
                await trio.sleep(0.05 * 2**round_number)
        else:
            self.report.not_verified = [p.decode(errors="replace") for p in sorted(paths)]
        self.report.finished = True
        return self.report

    async def _check_all(self, paths: dict[bytes, bool]) -> None:
        limiter = trio.CapacityLimiter(self._workers)
        async with trio.open_nursery() as nursery:
            for path, whole in sorted(paths.items()):
                nursery.start_soon(self._check_tree, nursery, limiter, path, whole)

    # -- what counts as changed -------------------------------------------------------------

    def _look_again(self, path: bytes, whole: bool = True) -> None:
        self._again[path] = self._again.get(path, False) or whole

    def _moved(self, path: bytes, since: int) -> bool:
        return self._clock.changed(path, since) or self._entries_changed.get(path, 0) > since

    def _differs(self, path: bytes, what: str) -> None:
        self.report.difference_count += 1
        if len(self.report.differences) < MAX_LISTED:
            self.report.differences[path.decode(errors="replace")] = what

    # -- comparing --------------------------------------------------------------------------

    async def _check_tree(
        self, nursery: trio.Nursery, limiter: trio.CapacityLimiter, path: bytes, whole: bool
    ) -> None:
        """``whole``: the directory and everything under it; else only its own attributes."""
        async with limiter:
            since = self._clock.clock
            answer = decode_entries(await self._stream.ask(ListQuery(path)), self._stream.version)
            local = await trio.to_thread.run_sync(survey, self._root_fd, path)
        mine = local[0] if local else None
        theirs = answer[0] if answer else None
        if mine is None or theirs is None or mine.kind != stat.S_IFDIR:
            await self._check_object(limiter, path, mine, theirs, since)
            return
        if theirs.kind != stat.S_IFDIR:
            if not self._moved(path, since):
                self._differs(path, f"a directory here, {_kind(theirs)} on the peer")
            else:
                self._look_again(path)
            return
        self.report.paths_checked += 1
        if not _same_entry(mine, theirs):
            if self._moved(path, since):
                self._look_again(path, whole=False)  # entries come and go: its times move
            else:
                self._differs(path, _what_differs(mine, theirs))
        if not whole:
            return
        assert local is not None and answer is not None
        their_children = {entry.name: entry for entry in answer[1:]}
        for entry in local[1:]:
            child = child_path(path, entry.name)
            other = their_children.pop(entry.name, None)
            if entry.kind == stat.S_IFDIR and other is not None and other.kind == stat.S_IFDIR:
                nursery.start_soon(self._check_tree, nursery, limiter, child, True)
            else:
                nursery.start_soon(self._check_object, limiter, child, entry, other, since)
        for name, other in their_children.items():
            child = child_path(path, name)
            nursery.start_soon(self._check_object, limiter, child, None, other, since)

    async def _check_object(
        self,
        limiter: trio.CapacityLimiter,
        path: bytes,
        mine: Entry | None,
        theirs: Entry | None,
        since: int,
    ) -> None:
        """Compare one non-directory (or a path missing on one side), as listed at ``since``."""
        if mine is None and theirs is None:
            return
        both_files = (
            mine is not None and theirs is not None and mine.kind == theirs.kind == stat.S_IFREG
        )
        nlink = max(mine.nlink if mine else 1, theirs.nlink if theirs else 1)
        blocks = self._clock.changed_blocks(path, since, nlink)
        written = blocks is None or bool(blocks)
        moved = self._moved(path, since) or self._clock.attributes_changed(path, since, nlink)
        if moved or (written and not both_files):
            self._look_again(path)
            return
        self.report.paths_checked += 1
        if mine is None:
            self._differs(path, f"{_kind(theirs)} only on the peer")
        elif theirs is None:
            self._differs(path, f"{_kind(mine)} missing on the peer")
        elif not mine.same_object(theirs):
            self._differs(path, f"{_kind(mine)} here, {_kind(theirs)} on the peer")
        elif both_files and not written and _small_and_single(mine, theirs):
            self.report.bytes_compared += mine.size
            what = [] if mine.content == theirs.content else ["content differs"]
            if not _same_entry(mine, theirs):
                what.append(_what_differs(mine, theirs))
            if what:
                self._differs(path, "; ".join(what))
        elif both_files:
            async with limiter:
                content = await self._compare_data(path, max(mine.size, theirs.size))
            if content is None:
                return  # looked at again later
            what = [content] if content else []
            # a file being written has its size and times in flight: its blocks say enough
            if not _same_entry(mine, theirs, sized=not written):
                what.append(_what_differs(mine, theirs, sized=not written))
            if what:
                self._differs(path, "; ".join(what))
        elif not _same_entry(mine, theirs):
            self._differs(path, _what_differs(mine, theirs))

    async def _compare_data(self, path: bytes, size: int) -> str | None:
        """How the content differs ("" if it does not); None: replaced meanwhile, queued."""
        offset = 0
        while offset < size or offset == 0:
            answer = await self._hash_both(path, offset, COMPARE_CHUNK)
            if answer is None:
                return None
            local_hashes, their_hashes, dirty = answer.mine, answer.theirs, answer.dirty
            if offset == 0 and not self._same_group(answer):
                return "its names are linked differently on the peer (hard links)"
            self.report.bytes_compared += len(local_hashes) * BLOCK
            differing = differing_blocks(local_hashes, their_hashes)
            # a block the application wrote while it was hashed may differ only in time:
            # look at it alone again (it settles as soon as it is left alone for a moment)
            unsure = [index for index in differing if dirty is None or index in dirty]
            real = [index for index in differing if dirty is not None and index not in dirty]
            for index in unsure:
                settled = await self._settle_block(path, offset + index * BLOCK)
                if settled is None:
                    return None
                if not settled:
                    real.append(index)
            if real:
                position = offset + min(real) * BLOCK
                return f"content differs: {len(real)} block(s) of {BLOCK} from byte {position}"
            offset += COMPARE_CHUNK
        return ""

    async def _settle_block(self, path: bytes, position: int) -> bool | None:
        """Whether one block is the same on both sides, looked at until nobody writes it
        meanwhile; None when it cannot be told (the file was replaced, or it never rests)."""
        for attempt in range(ROUNDS * 2):
            answer = await self._hash_both(path, position, BLOCK)
            if answer is None:
                return None
            if answer.dirty is not None and 0 not in answer.dirty:
                return answer.mine == answer.theirs
            await trio.sleep(0.01 * 2**attempt)
        self._look_again(path)
        return None

    def _same_group(self, answer: _Hashes) -> bool:
        """Whether the names of a hard-linked file are one file on the peer too (as far as this
        verify has seen: each inode of theirs pairs with one of ours)."""
        if answer.nlink <= 1:
            return True
        ours = self._paired.setdefault(answer.their_inode, answer.our_inode)
        theirs = self._paired_back.setdefault(answer.our_inode, answer.their_inode)
        return ours == answer.our_inode and theirs == answer.their_inode

    async def _hash_both(self, path: bytes, offset: int, length: int) -> _Hashes | None:
        """Both sides' hashes of a range, and which of its blocks the application wrote while
        they were taken (None: any of them); None if the path is no longer a file on a side."""
        since = self._clock.clock
        box: list[bytes] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ask_into, box, HashQuery(path, offset, length, BLOCK))
            mine = await trio.to_thread.run_sync(self._hash_local, path, offset, length)
        theirs = decode_hashes(box[0], self._stream.version)
        if mine is None or theirs.status != FOUND or self._moved(path, since):
            self._look_again(path)  # replaced meanwhile (a listing said both were files)
            return None
        st, local_hashes = mine
        nlink = max(st.st_nlink, theirs.nlink)
        ranges = self._clock.changed_blocks(path, since, nlink)
        dirty: set[int] | None = None
        if ranges is not None:
            dirty = set()
            span = offset + max(length, len(local_hashes) * BLOCK, len(theirs.hashes) * BLOCK)
            if ranges and st.st_size != theirs.size:
                # a file that grew or shrank meanwhile also changed the block that held its old
                # end (hashed short then, whole now), which no written range names
                ranges = [*ranges, (min(st.st_size, theirs.size), span)]
            for start, end in ranges:
                first = max(start, offset)
                last = min(end, span)
                dirty.update(range((first - offset) // BLOCK, (last - offset + BLOCK - 1) // BLOCK))
        our_inode = (st.st_dev, st.st_ino)
        return _Hashes(local_hashes, theirs.hashes, dirty, nlink, our_inode, theirs.ino)

    async def _ask_into(self, box: list[bytes], query: Query) -> None:
        box.append(await self._stream.ask(query))

    def _hash_local(
        self, path: bytes, offset: int, length: int
    ) -> tuple[os.stat_result, array[int]] | None:
        with open_regular(self._root_fd, path) as opened:
            if opened is None:
                return None
            fd, st = opened
            length = max(0, min(length, st.st_size - offset))
            return st, hash_blocks(fd, offset, length, BLOCK)


def _small_and_single(mine: Entry, theirs: Entry) -> bool:
    """Both listings carry the content digest (one name each): no hash query needed."""
    return bool(mine.content and theirs.content) and mine.nlink == theirs.nlink == 1


def _same_entry(mine: Entry, theirs: Entry, *, sized: bool = True) -> bool:
    """``sized``: compare size and times too (a directory's size is the filesystem's business:
    ext4 never shrinks one)."""
    if not (mine.same_object(theirs) and mine.same_attributes(theirs)):
        return False
    if mine.nlink != theirs.nlink:
        return False
    if not sized:
        return True
    return mine.mtime_ns == theirs.mtime_ns and (
        mine.kind == stat.S_IFDIR or mine.size == theirs.size
    )


def _what_differs(mine: Entry, theirs: Entry, *, sized: bool = True) -> str:
    parts = []
    if stat.S_IMODE(mine.mode) != stat.S_IMODE(theirs.mode) and mine.kind != stat.S_IFLNK:
        parts.append(f"mode {stat.S_IMODE(mine.mode):o} here, {stat.S_IMODE(theirs.mode):o} there")
    if (mine.uid, mine.gid) != (theirs.uid, theirs.gid):
        parts.append(f"owner {mine.uid}:{mine.gid} here, {theirs.uid}:{theirs.gid} there")
    if mine.xattrs != theirs.xattrs:
        parts.append("extended attributes differ")
    if sized and mine.size != theirs.size and mine.kind != stat.S_IFDIR:
        parts.append(f"size {mine.size} here, {theirs.size} there")
    if mine.nlink != theirs.nlink:
        parts.append(f"{mine.nlink} link(s) here, {theirs.nlink} there")
    if sized and mine.mtime_ns != theirs.mtime_ns:
        parts.append("modification time differs")
    return "; ".join(parts) or "differs"


def _kind(entry: Entry | None) -> str:
    if entry is None:
        return "nothing"
    return {
        stat.S_IFREG: "a file",
        stat.S_IFDIR: "a directory",
        stat.S_IFLNK: "a symbolic link",
        stat.S_IFIFO: "a FIFO",
        stat.S_IFSOCK: "a socket",
        stat.S_IFCHR: "a character device",
        stat.S_IFBLK: "a block device",
    }.get(entry.kind, "an object")


def log_report(report: VerifyReport) -> dict[str, object]:
    """Say in the log what a verify found; its report as a dict (the operator's answer)."""
    summary = report.as_dict()
    if summary["identical"]:
        log.info(
            "verify: copies identical (%d paths, %d bytes compared in %.2f s)",
            report.paths_checked,
            report.bytes_compared,
            summary["elapsed_s"],
        )
    else:
        named = ", ".join(f"{path}: {what}" for path, what in list(report.differences.items())[:5])
        log.warning(
            "verify: %d difference(s)%s%s",
            report.difference_count,
            f" ({named})" if named else "",
            f"; not verified (kept changing): {len(report.not_verified)}"
            if report.not_verified
            else "",
        )
    return summary
