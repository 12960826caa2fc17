"""The serving node's side of a resync: settle every path the plan names while the application
keeps running, then ask the peer to confirm.

Why resync data can never overwrite a newer write: the resync runs in the mount's event loop,
and every step that reads the local tree submits what it read *before the next await*. The
filesystem's own handlers do the same (change the tree and submit, in one step), so the stream
orders a resync write and an application write exactly as they happened here: a later
application write is applied after the resync data it supersedes.

Comparisons are the only place where staleness could creep in: the peer answers a query at a
point of the stream, the local side is read later. A block is skipped as equal only if nothing
submitted since the query could have changed it (``ChangeClock``); otherwise it is sent as it
is now.
"""

from __future__ import annotations

import errno
import heapq
import logging
import os
import stat
import time
from array import array
from typing import Protocol

import trio

from tandem.engine.protocol.items import StreamItem
from tandem.engine.protocol.queries import Finish, HashQuery, ListQuery, Query
from tandem.engine.protocol.repairs import (
    Ensure,
    LinkIfPresent,
    RemoveTree,
    SetXattrs,
)
from tandem.engine.protocol.results import FOUND, Entry, decode_entries, decode_hashes
from tandem.engine.reintegration.change_clock import ChangeClock
from tandem.engine.reintegration.plan import Need, Plan, Work
from tandem.engine.reintegration.progress import Progress, estimate
from tandem.engine.replica.survey import (
    child_path,
    differing_blocks,
    open_regular,
    survey,
    xattr_items,
)
from tandem.fsdriver.beneath import lstat_beneath, read_link
from tandem.fsdriver.change import UNBOUNDED
from tandem.fsdriver.mutation import (
    Mutation,
    SetAttributes,
    Stamp,
    Write,
)
from tandem.native.blockhash import hash_blocks

log = logging.getLogger(__name__)

BLOCK = 4096
COMPARE_CHUNK = 64 << 20  # bytes of a file hashed per query
SEND_CHUNK = 1 << 20  # bytes per resync Write
WORKERS = 4  # paths settled at once (their queries overlap)


class ResyncStream(Protocol):
    """What the resync needs from the replication connection."""

    def submit(self, item: StreamItem) -> int:
        """Queue an item in stream order (never awaits); returns its sequence number."""

    async def ask(self, query: Query) -> bytes:
        """Submit a query and return the peer's whole answer."""

    async def room(self) -> None:
        """Return once the connection has room for more (bounded memory)."""

    @property
    def version(self) -> int:
        """The protocol version agreed with the peer (how its answers are laid out)."""


class PeerRefused(Exception):
    pass


def _depth_key(path: bytes) -> tuple[int, bytes]:
    return (0 if path == b"." else path.count(b"/") + 1, path)


class Resync:
    def __init__(
        self,
        root_fd: int,
        stream: ResyncStream,
        generation: str,
        *,
        workers: int = WORKERS,
        bandwidth: float | None = None,  # bytes/s of file data, None: unlimited
    ) -> None:
        self._root_fd = root_fd
        self._stream = stream
        self._plan = Plan()  # until `adopt`: the history is read after mirroring started
        self.generation = generation
        self._workers = workers
        self._bandwidth = bandwidth
        self.progress = Progress()
        self._changes = ChangeClock()
        self._pending: dict[bytes, Work] = {}
        self._heap: list[tuple[int, bytes]] = []
        self._busy = 0
        self._wakeup = trio.Event()
        self._unsettled_received = 0
        self._directories: set[bytes] = set()  # whose times the resync disturbed on the peer
        self._allowance_at = time.monotonic()
        # hard-linked files: the name compared first, and when that comparison ended
        self._links: dict[tuple[int, int], tuple[bytes, trio.Event]] = {}
        self._their_inodes: dict[int, tuple[int, int]] = {}  # peer's inode -> ours

    def adopt(self, plan: Plan) -> None:
        """The plan, once read (mutations observed before it are already accounted for)."""
        self._plan = plan

    # -- what the replicator tells it -------------------------------------------------------

    def observe(self, mutation: Mutation) -> None:
        """An application mutation entered the stream (same step as the change)."""
        for path in self._changes.observe(mutation):
            self._queue(path, Work(Need.TREE))

    def unsettled(self, paths: tuple[bytes, ...]) -> None:
        self._unsettled_received += 1
        self.progress.unsettled += len(paths)
        for path in paths:
            self._queue(path, Work(Need.TREE))

    # -- scheduling -------------------------------------------------------------------------

    def _queue(self, path: bytes, work: Work) -> None:
        if path in self._pending:
            self._pending[path].merge(work)
            return
        self._pending[path] = work
        depth, _ = _depth_key(path)
        heapq.heappush(self._heap, (depth, path))
        self.progress.paths_total += 1
        self._wakeup.set()

    async def run(self) -> Progress:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._estimate)
            await self._settle_all()
            nursery.cancel_scope.cancel()
        return self.progress

    async def _estimate(self) -> None:
        objects, size = await trio.to_thread.run_sync(
            estimate, self._root_fd, self._plan, abandon_on_cancel=True
        )
        self.progress.files_total, self.progress.bytes_total = objects, size

    async def _settle_all(self) -> None:
        for move in self._plan.moves:
            self._stream.submit(move)
        for path, work in self._plan.work.items():
            self._queue(path, work)
        while True:
            async with trio.open_nursery() as nursery:
                for _ in range(self._workers):
                    nursery.start_soon(self._worker)
            await self._restore_directory_times()
            answer = await self._stream.ask(
                Finish(self.generation.encode(), self._unsettled_received)
            )
            if answer == b"\x01":
                return
            if answer != b"\x00":
                raise PeerRefused(f"the peer answered the resync's end with {answer!r}")
            if not self._heap:
                # it asked for more than we have seen yet: the request is on its way
                await trio.sleep(0.01)

    async def _worker(self) -> None:
        while True:
            if not self._heap:
                if self._busy == 0:
                    self._wakeup.set()  # let the other workers see the end too
                    return
                if self._wakeup.is_set():
                    self._wakeup = trio.Event()
                await self._wakeup.wait()  # every idle worker waits on the same event
                continue
            _, path = heapq.heappop(self._heap)
            work = self._pending.pop(path)
            self._busy += 1
            try:
                await self._settle(path, work)
            finally:
                self._busy -= 1
                self.progress.paths_done += 1
                self._wakeup.set()

    # -- settling one path ------------------------------------------------------------------

    async def _settle(self, path: bytes, work: Work) -> None:
        if path != b".":
            self._directories.add(path.rpartition(b"/")[0] or b".")
        if work.need & Need.TREE:
            await self._compare_tree(path)
        elif work.need & Need.ENTRY:
            await self._compare_object(path, remote=None, known=False, xattrs=True)
        else:
            st = self._local(path)
            if st is None or not stat.S_ISREG(st.st_mode):
                await self._compare_object(path, remote=None, known=False, xattrs=True)
                return
            await trio.to_thread.run_sync(self._prefetch, path, work.ranges)
            for start, end in work.ranges:
                await self._send_range(path, start, end, skip_holes=False)
                self.progress.bytes_done += max(0, min(end, st.st_size) - start)
            self._finish_object(path, xattrs=bool(work.need & Need.META))

    def _local(self, path: bytes) -> os.stat_result | None:
        try:
            return lstat_beneath(self._root_fd, path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            # a path the peer named that leads through a symlink here: nothing of ours is
            # there (what lies beyond the link is not the copy's, never sent)
            if exc.errno in (errno.ELOOP, errno.EXDEV):
                return None
            raise

    def _ensure_now(self, path: bytes, *, fresh: bool) -> os.stat_result | None:
        """Make the peer's ``path`` what ours is now (type, owner, mode; not file data)."""
        st = self._local(path)
        if st is None:
            if path != b".":
                self._stream.submit(RemoveTree(path))
            return None
        target = read_link(self._root_fd, path) if stat.S_ISLNK(st.st_mode) else b""
        self._stream.submit(
            Ensure(path, st.st_mode, st.st_uid, st.st_gid, st.st_rdev, target, fresh=fresh)
        )
        if not stat.S_ISLNK(st.st_mode):
            self._stream.submit(SetXattrs(path, xattr_items(self._root_fd, path)))
        if stat.S_ISDIR(st.st_mode):
            self._directories.add(path)
        return st

    def _finish_object(self, path: bytes, *, xattrs: bool) -> None:
        """Size, owner, mode and times as they are now (after the data: writes move mtime)."""
        st = self._local(path)
        if st is None:
            return
        is_link = stat.S_ISLNK(st.st_mode)
        self._stream.submit(
            SetAttributes(
                path,
                mode=None if is_link else stat.S_IMODE(st.st_mode),
                uid=st.st_uid,
                gid=st.st_gid,
                size=st.st_size if stat.S_ISREG(st.st_mode) else None,
                stamps=(Stamp(path, st.st_atime_ns, st.st_mtime_ns),),
            )
        )
        if xattrs and not is_link:
            self._stream.submit(SetXattrs(path, xattr_items(self._root_fd, path)))

    async def _compare_tree(self, path: bytes) -> None:
        since = self._changes.clock
        answer = decode_entries(await self._stream.ask(ListQuery(path)), self._stream.version)
        local = await trio.to_thread.run_sync(survey, self._root_fd, path)
        if local is None:
            if self._local(path) is None and path != b".":
                self._stream.submit(RemoveTree(path))
            elif self._local(path) is not None:
                self._queue(path, Work(Need.TREE))  # appeared meanwhile: look again
            return
        remote = answer[0] if answer else None
        mine = local[0]
        if mine.kind != stat.S_IFDIR:
            differ = remote is None or remote.xattrs != mine.xattrs
            await self._compare_object(path, remote=remote, known=True, since=since, xattrs=differ)
            return
        remote_children: dict[bytes, Entry] = {}
        if remote is None or remote.kind != stat.S_IFDIR:
            self._ensure_now(path, fresh=True)  # an empty directory there: we send it all
        else:
            assert answer is not None
            remote_children = {entry.name: entry for entry in answer[1:]}
            if not mine.same_attributes(remote) or self._changes.changed(path, since):
                self._ensure_now(path, fresh=False)
        self._directories.add(path)
        local_names = {entry.name for entry in local[1:]}
        for name in sorted(set(remote_children) - local_names):
            child = child_path(path, name)
            if self._local(child) is None:  # still gone, as of this step
                self._stream.submit(RemoveTree(child))
        limiter = trio.CapacityLimiter(self._workers)
        linked = []
        async with trio.open_nursery() as nursery:
            for entry in local[1:]:
                child = child_path(path, entry.name)
                if entry.kind == stat.S_IFDIR:
                    self._queue(child, Work(Need.TREE))
                    continue
                theirs = remote_children.get(entry.name)
                if self._same_small_file(child, entry, theirs, since):
                    continue
                differ = theirs is None or theirs.xattrs != entry.xattrs
                if entry.nlink > 1 and entry.kind == stat.S_IFREG:
                    linked.append((child, theirs, differ))  # after the others: see _link_to
                    continue
                nursery.start_soon(self._compare_child, limiter, child, theirs, since, differ)
        for child, theirs, differ in linked:
            await self._compare_child(limiter, child, theirs, since, differ)

    def _same_small_file(self, path: bytes, mine: Entry, theirs: Entry | None, since: int) -> bool:
        """A small file whose listed content digests agree, untouched since the listing: only
        its attributes may need setting (one step, no query). False: compare it the long way."""
        if (
            theirs is None
            or not mine.content
            or mine.content != theirs.content
            or mine.size != theirs.size
            or mine.nlink != 1
            or theirs.nlink != 1
            or mine.kind != stat.S_IFREG
            or theirs.kind != stat.S_IFREG
            or self._changes.changed(path, since)
            or self._changes.changed_blocks(path, since, 1) != []
        ):
            return False
        if not mine.same_attributes(theirs) or mine.mtime_ns != theirs.mtime_ns:
            self._finish_object(path, xattrs=mine.xattrs != theirs.xattrs)
        self.progress.paths_done += 1
        self.progress.paths_total += 1
        self.progress.bytes_compared += mine.size
        self.progress.bytes_done += mine.size
        return True

    async def _compare_child(
        self,
        limiter: trio.CapacityLimiter,
        path: bytes,
        remote: Entry | None,
        since: int,
        xattrs: bool,
    ) -> None:
        async with limiter:
            await self._compare_object(path, remote=remote, known=True, since=since, xattrs=xattrs)
            self.progress.paths_done += 1
            self.progress.paths_total += 1

    async def _compare_object(
        self,
        path: bytes,
        *,
        remote: Entry | None,
        known: bool,
        since: int = 0,
        xattrs: bool,
    ) -> None:
        """Settle one object. ``known``: ``remote`` is the peer's entry as of ``since``
        (None: nothing there); otherwise the peer's state is unknown."""
        st = self._local(path)
        if st is None:
            self._ensure_now(path, fresh=False)  # nothing here: nothing there either
            return
        if stat.S_ISDIR(st.st_mode):
            if known:
                self._queue(path, Work(Need.TREE))
            else:
                # a directory the journal saw created: its entries have records of their own
                self._ensure_now(path, fresh=True)
                self._finish_object(path, xattrs=False)
            return
        if not stat.S_ISREG(st.st_mode):
            mine = survey(self._root_fd, path)
            if (
                not known
                or remote is None
                or mine is None
                or not mine[0].same_object(remote)
                or not mine[0].same_attributes(remote)
                or self._changes.changed(path, since)
            ):
                self._ensure_now(path, fresh=False)
            self._finish_object(path, xattrs=False)  # times too: cheaper than comparing them
            return
        claim: trio.Event | None = None
        if st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            claimed = self._links.get(key)
            if claimed is not None and claimed[0] != path:
                await claimed[1].wait()
                if self._link_to(claimed[0], path, key):
                    # writes through this name before the link reached the peer's old file
                    # there, not the linked one: compare the linked file again
                    await self._compare_file(path, check_links=False)
                    self._finish_object(path, xattrs=True)
                    return
            else:
                claim = trio.Event()
                self._links[key] = (path, claim)
        try:
            if known and (remote is None or remote.kind != stat.S_IFREG):
                await self._send_new_file(path)
            elif await self._compare_file(path):
                self._finish_object(path, xattrs=xattrs)
            else:
                await self._send_new_file(path)
        finally:
            if claim is not None:
                claim.set()

    def _link_to(self, settled: bytes, path: bytes, key: tuple[int, int]) -> bool:
        """Another name of this file was settled by this resync: link to it there (one step)
        instead of comparing a second copy, so the peer keeps the names one file."""
        for name in (settled, path):
            now = self._local(name)
            if now is None or (now.st_dev, now.st_ino) != key:
                return False
        self._stream.submit(LinkIfPresent(settled, path))
        return True

    async def _send_new_file(self, path: bytes) -> None:
        """The peer has no such file (or another kind of object): a new one, all its data."""
        st = self._ensure_now(path, fresh=True)
        await self._send_range(path, 0, UNBOUNDED, skip_holes=True)
        self._finish_object(path, xattrs=False)
        if st is not None:
            self.progress.bytes_done += st.st_size

    async def _compare_file(self, path: bytes, *, check_links: bool = True) -> bool:
        """Send the blocks that differ; False when the peer has no file there to compare, or
        one whose links differ from ours (writing into it would change its other names)."""
        offset = 0
        while True:
            since = self._changes.clock
            theirs_box: list[bytes] = []
            async with trio.open_nursery() as nursery:
                query = HashQuery(path, offset, COMPARE_CHUNK, BLOCK)
                nursery.start_soon(self._ask_into, theirs_box, query)
                mine = await self._hash_local(path, offset)
            if mine is None:
                return True  # gone or replaced meanwhile: its own mutations say what happened
            st, local_hashes = mine
            theirs = decode_hashes(theirs_box[0], self._stream.version)
            if theirs.status != FOUND:
                if offset == 0:
                    return False
                self._queue(path, Work(Need.TREE))  # replaced there mid-way: look again
                return True
            if offset == 0 and check_links and not self._same_links(st, theirs.ino, theirs.nlink):
                return False
            self.progress.bytes_compared += len(local_hashes) * BLOCK
            self.progress.bytes_done += max(0, min(COMPARE_CHUNK, st.st_size - offset))
            changed = self._changes.changed_blocks(path, since, st.st_nlink)
            await self._send_differences(path, offset, local_hashes, theirs.hashes, changed)
            offset += COMPARE_CHUNK
            if offset >= max(st.st_size, theirs.size):
                return True

    def _same_links(self, st: os.stat_result, their_ino: int, their_nlink: int) -> bool:
        """Whether the peer's file is linked as ours is (as far as this resync has seen)."""
        if their_nlink != st.st_nlink:
            return False
        if st.st_nlink == 1:
            return True
        mine = (st.st_dev, st.st_ino)
        return self._their_inodes.setdefault(their_ino, mine) == mine

    async def _ask_into(self, box: list[bytes], query: Query) -> None:
        box.append(await self._stream.ask(query))

    async def _hash_local(
        self, path: bytes, offset: int
    ) -> tuple[os.stat_result, array[int]] | None:
        with open_regular(self._root_fd, path) as opened:
            if opened is None:
                return None
            fd, st = opened
            length = max(0, min(COMPARE_CHUNK, st.st_size - offset))
            hashes = await trio.to_thread.run_sync(hash_blocks, fd, offset, length, BLOCK)
            return st, hashes

    async def _send_differences(
        self,
        path: bytes,
        offset: int,
        mine: array[int],
        theirs: array[int],
        changed: list[tuple[int, int]] | None,
    ) -> None:
        if changed is None:
            await self._send_range(path, offset, offset + COMPARE_CHUNK, skip_holes=False)
            return
        # a block only one side had when hashed differs: what we have there now is sent (nothing
        # if we still have nothing: the final size settles that)
        differing = differing_blocks(mine, theirs)
        dirty_blocks: set[int] = set()
        for start, end in changed:
            first = max(start, offset) // BLOCK
            last = (min(end, offset + COMPARE_CHUNK) + BLOCK - 1) // BLOCK
            dirty_blocks.update(range(first - offset // BLOCK, last - offset // BLOCK))
        blocks = sorted(
            set(differing) | {b for b in dirty_blocks if 0 <= b < COMPARE_CHUNK // BLOCK}
        )
        run_start = None
        previous = -2
        for block in [*blocks, -1]:
            if block != previous + 1 and run_start is not None:
                await self._send_range(
                    path, offset + run_start * BLOCK, offset + (previous + 1) * BLOCK, False
                )
                run_start = None
            if block >= 0 and run_start is None:
                run_start = block
            previous = block

    def _prefetch(self, path: bytes, ranges: list[tuple[int, int]]) -> None:
        """Have the kernel read every range at once: one by one, scattered blocks cost a disk
        round trip each (the reads that send them then find them cached)."""
        with open_regular(self._root_fd, path) as opened:
            if opened is None:
                return
            fd, st = opened
            for start, end in ranges:
                length = min(end, st.st_size) - start
                if length > 0:
                    os.posix_fadvise(fd, start, length, os.POSIX_FADV_WILLNEED)

    async def _send_range(self, path: bytes, start: int, end: int, skip_holes: bool) -> None:
        """Send [start, end) of ``path`` as it is now, one chunk per step."""
        position = start
        while position < end:
            sent = self._send_chunk(path, position, end, skip_holes)
            if sent is None:
                return
            position, size = sent
            await self._pace(size)

    def _send_chunk(
        self, path: bytes, position: int, end: int, skip_holes: bool
    ) -> tuple[int, int] | None:
        """One atomic step: read and submit; returns where the next chunk starts and how much
        was sent (None: nothing more to send)."""
        with open_regular(self._root_fd, path) as opened:
            if opened is None:
                return None
            fd, st = opened
            stop = min(end, st.st_size)
            if position >= stop:
                if end > st.st_size:
                    # nothing here from `position` on, as of now: neither may the peer have
                    # (data it holds there would outlive a later extension of the file)
                    self._stream.submit(SetAttributes(path, size=st.st_size))
                return None
            if skip_holes:
                try:
                    position = os.lseek(fd, position, os.SEEK_DATA)
                    stop = min(stop, os.lseek(fd, position, os.SEEK_HOLE))
                except OSError:
                    return None  # only a hole remains (ENXIO)
                if position >= min(end, st.st_size):
                    return None
            data = os.pread(fd, min(SEND_CHUNK, stop - position), position)
        if not data:
            return None
        self._stream.submit(Write(path, position, data))
        self.progress.bytes_sent += len(data)
        return position + len(data), len(data)

    async def _pace(self, sent: int) -> None:
        await self._stream.room()
        if self._bandwidth:
            self._allowance_at = max(self._allowance_at, time.monotonic()) + (
                sent / self._bandwidth
            )
            delay = self._allowance_at - time.monotonic()
            if delay > 0:
                await trio.sleep(delay)

    async def _restore_directory_times(self) -> None:
        """Creating and removing entries moved the peer's directory times: set them as ours."""
        for directory in sorted(self._directories, key=_depth_key, reverse=True):
            st = self._local(directory)
            if st is not None and stat.S_ISDIR(st.st_mode):
                self._stream.submit(
                    SetAttributes(
                        directory, stamps=(Stamp(directory, st.st_atime_ns, st.st_mtime_ns),)
                    )
                )
        self._directories.clear()
        await self._stream.room()
