"""`tandem verify`: compare the two copies while the application runs, change nothing.

It asks the same questions a full resync asks (listings, then per-block hashes, see
`tandem.engine.resync`) and uses the same clock to tell a real difference from one the stream
has not delivered yet: the peer answers a query after applying everything submitted before it,
and this side reads its own copy afterwards, so an object that no mutation touched in between
must look the same on both. Whatever the application did change meanwhile is looked at again
(a few rounds, further apart); an object that keeps changing is reported as not verified, never
as a difference.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from array import array
from dataclasses import dataclass, field
from typing import Protocol

import trio

from tandem.fsdriver.mutation import MakeHardLink, Mutation, Rename
from tandem.native.blockhash import hash_blocks

from .queries import HashQuery, ListQuery, Query
from .resync import BLOCK, COMPARE_CHUNK, ChangeClock
from .survey import FOUND, Entry, child_path, decode_entries, decode_hashes, survey

log = logging.getLogger(__name__)

ROUNDS = 4  # looks at a changing object before calling it not verified
WORKERS = 4
MAX_LISTED = 1000  # differences named in the report (all are counted)


class QueryStream(Protocol):
    async def ask(self, query: Query) -> bytes:
        """Submit a query in stream order and return the peer's whole answer."""


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


class Verify:
    def __init__(self, root_fd: int, stream: QueryStream, *, workers: int = WORKERS) -> None:
        self._root_fd = root_fd
        self._stream = stream
        self._workers = workers
        self._clock = ChangeClock()
        self._entries_changed: dict[bytes, int] = {}  # directory -> last clock a name in it moved
        self._again: set[bytes] = set()
        self.report = VerifyReport()

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
        paths = [b"."]
        for round_number in range(ROUNDS):
            await self._check_all(paths)
            if not self._again:
                break
            paths, self._again = sorted(self._again), set()
            if round_number < ROUNDS - 1:
                await trio.sleep(0.1 * 2**round_number)
        else:
            self.report.not_verified = [p.decode(errors="replace") for p in sorted(paths)]
        self.report.finished = True
        return self.report

    async def _check_all(self, paths: list[bytes]) -> None:
        limiter = trio.CapacityLimiter(self._workers)
        async with trio.open_nursery() as nursery:
            for path in paths:
                nursery.start_soon(self._check_tree, nursery, limiter, path)

    # -- what counts as changed -------------------------------------------------------------

    def _moved(self, path: bytes, since: int) -> bool:
        return self._clock.changed(path, since) or self._entries_changed.get(path, 0) > since

    def _written(self, path: bytes, since: int, nlink: int) -> bool:
        blocks = self._clock.changed_blocks(path, since, nlink)
        return blocks is None or bool(blocks)

    def _differs(self, path: bytes, what: str) -> None:
        self.report.difference_count += 1
        if len(self.report.differences) < MAX_LISTED:
            self.report.differences[path.decode(errors="replace")] = what

    # -- comparing --------------------------------------------------------------------------

    async def _check_tree(
        self, nursery: trio.Nursery, limiter: trio.CapacityLimiter, path: bytes
    ) -> None:
        async with limiter:
            since = self._clock.clock
            answer = decode_entries(await self._stream.ask(ListQuery(path)))
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
                self._again.add(path)
            return
        self.report.paths_checked += 1
        if not _same_entry(mine, theirs):
            if self._moved(path, since):
                self._again.add(path)
            else:
                self._differs(path, _what_differs(mine, theirs))
        assert local is not None and answer is not None
        their_children = {entry.name: entry for entry in answer[1:]}
        for entry in local[1:]:
            child = child_path(path, entry.name)
            other = their_children.pop(entry.name, None)
            if entry.kind == stat.S_IFDIR and other is not None and other.kind == stat.S_IFDIR:
                nursery.start_soon(self._check_tree, nursery, limiter, child)
            else:
                nursery.start_soon(self._check_object, limiter, child, entry, other, since)
        for name, other in their_children.items():
            nursery.start_soon(
                self._check_object, limiter, child_path(path, name), None, other, since
            )

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
        nlink = max(mine.nlink if mine else 1, theirs.nlink if theirs else 1)
        if self._moved(path, since) or self._written(path, since, nlink):
            self._again.add(path)
            return
        self.report.paths_checked += 1
        if mine is None:
            self._differs(path, f"{_kind(theirs)} only on the peer")
        elif theirs is None:
            self._differs(path, f"{_kind(mine)} missing on the peer")
        elif not mine.same_object(theirs):
            self._differs(path, f"{_kind(mine)} here, {_kind(theirs)} on the peer")
        elif not _same_entry(mine, theirs):
            self._differs(path, _what_differs(mine, theirs))
        elif mine.kind == stat.S_IFREG:
            async with limiter:
                await self._compare_data(path, mine.size)

    async def _compare_data(self, path: bytes, size: int) -> None:
        offset = 0
        while offset < size or offset == 0:
            since = self._clock.clock
            box: list[bytes] = []
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    self._ask_into, box, HashQuery(path, offset, COMPARE_CHUNK, BLOCK)
                )
                mine = await trio.to_thread.run_sync(self._hash_local, path, offset)
            theirs = decode_hashes(box[0])
            if mine is None or theirs.status != FOUND:
                self._again.add(path)  # replaced meanwhile (a listing said both were files)
                return
            nlink, local_hashes = mine
            if self._moved(path, since) or self._written(path, since, nlink):
                self._again.add(path)
                return
            self.report.bytes_compared += len(local_hashes) * BLOCK
            first = _first_difference(local_hashes, theirs.hashes)
            if first is not None:
                position = offset + first * BLOCK
                count = sum(
                    1
                    for index in range(max(len(local_hashes), len(theirs.hashes)))
                    if index >= len(local_hashes)
                    or index >= len(theirs.hashes)
                    or local_hashes[index] != theirs.hashes[index]
                )
                self._differs(
                    path, f"content differs: {count} block(s) of {BLOCK} from byte {position}"
                )
                return
            offset += COMPARE_CHUNK

    async def _ask_into(self, box: list[bytes], query: Query) -> None:
        box.append(await self._stream.ask(query))

    def _hash_local(self, path: bytes, offset: int) -> tuple[int, array[int]] | None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._root_fd)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return None
            length = max(0, min(COMPARE_CHUNK, st.st_size - offset))
            return st.st_nlink, hash_blocks(fd, offset, length, BLOCK)
        finally:
            os.close(fd)


def _first_difference(mine: array[int], theirs: array[int]) -> int | None:
    if mine == theirs:
        return None
    for index in range(min(len(mine), len(theirs))):
        if mine[index] != theirs[index]:
            return index
    return min(len(mine), len(theirs))


def _same_entry(mine: Entry, theirs: Entry) -> bool:
    # a directory's size is the filesystem's business (ext4 never shrinks one)
    size_matters = mine.kind != stat.S_IFDIR
    return (
        mine.same_object(theirs)
        and mine.same_attributes(theirs)
        and (mine.mtime_ns, mine.nlink) == (theirs.mtime_ns, theirs.nlink)
        and (not size_matters or mine.size == theirs.size)
    )


def _what_differs(mine: Entry, theirs: Entry) -> str:
    parts = []
    if stat.S_IMODE(mine.mode) != stat.S_IMODE(theirs.mode) and mine.kind != stat.S_IFLNK:
        parts.append(f"mode {stat.S_IMODE(mine.mode):o} here, {stat.S_IMODE(theirs.mode):o} there")
    if (mine.uid, mine.gid) != (theirs.uid, theirs.gid):
        parts.append(f"owner {mine.uid}:{mine.gid} here, {theirs.uid}:{theirs.gid} there")
    if mine.xattrs != theirs.xattrs:
        parts.append("extended attributes differ")
    if mine.size != theirs.size and mine.kind != stat.S_IFDIR:
        parts.append(f"size {mine.size} here, {theirs.size} there")
    if mine.nlink != theirs.nlink:
        parts.append(f"{mine.nlink} link(s) here, {theirs.nlink} there")
    if mine.mtime_ns != theirs.mtime_ns:
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
