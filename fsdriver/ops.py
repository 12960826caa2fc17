"""FUSE operations of the in-place passthrough: each one applies the change to the backing
directory, describes it as a `Mutation`, hands it to the sink and answers the kernel only once
the sink's receipt says so.

Concurrency rule (trio): code between two ``await``s runs atomically. Every handler performs its
backing syscall, updates the inode table and submits its mutation in one such step, so the order
mutations reach the sink is exactly the order changes hit the backing tree. Do not add an
``await`` inside that step. An fsync submits its `Sync` first, so the peer syncs its copy while
this node syncs its own (`local_sync` decides inline or in a thread).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable, Sequence
from typing import ParamSpec, Protocol, TypeVar

import pyfuse3
from pyfuse3 import FUSEError

from tandem.fsdriver.backing import (
    adopt_new,
    entry_attributes,
    key_of,
    stamp_of,
    truncate,
)
from tandem.fsdriver.beneath import open_beneath
from tandem.fsdriver.boundary import boundary
from tandem.fsdriver.change import NO_RECORDER, Change, ChangeKind, ChangeRecorder
from tandem.fsdriver.handles import OpenDir, OpenFile
from tandem.fsdriver.inode import ROOT_INODE, InodeTable
from tandem.fsdriver.local_sync import LocalSync
from tandem.fsdriver.mutation import (
    DONE,
    Allocate,
    CreateFile,
    MakeDirectory,
    MakeHardLink,
    MakeNode,
    MakeSymlink,
    Mutation,
    RemoveDirectory,
    RemoveXattr,
    Rename,
    ReplicationSink,
    SetAttributes,
    SetXattr,
    Stamp,
    Sync,
    Unlink,
    Write,
)
from tandem.fsdriver.syscall import (
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_INSERT_RANGE,
    RENAME_EXCHANGE,
    fallocate,
    renameat2,
)
from tandem.fsdriver.tree import BackingTree

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")
# flags that make sense only to the kernel side of the open, or that our buffers cannot honour
# (O_DIRECT needs aligned memory; the kernel gives the application direct I/O itself)
CAPABILITY_XATTR = b"security.capability"
_OPEN_FLAGS_DROPPED = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT
_COPY_PIECE = 1 << 20


class DirectoryListing(Protocol):
    """A readdir answer of the native data plane (pyfuse3 hands over a ReaddirToken instead)."""

    def add(self, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool: ...


def _add_entry(
    token: pyfuse3.ReaddirToken | DirectoryListing,
    name: bytes,
    attr: pyfuse3.EntryAttributes,
    next_id: int,
) -> bool:
    """Adds one entry to a readdir answer; False when it is full."""
    if isinstance(token, pyfuse3.ReaddirToken):
        return bool(pyfuse3.readdir_reply(token, name, attr, next_id))
    return token.add(name, attr, next_id)


class Passthrough(pyfuse3.Operations):
    """Passthrough over the directory ``root_fd`` was opened on, before the mount hid it."""

    supports_dot_lookup = False
    # Never: with a writeback cache write(2) returns before this process (and the sink) sees
    # the data, which would break the promise that an acknowledged write is replicated.
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        root_fd: int,
        sink: ReplicationSink,
        *,
        attr_timeout: float = 1.0,
        entry_timeout: float = 1.0,
        recorder: ChangeRecorder = NO_RECORDER,
    ) -> None:
        super().__init__()
        root = os.fstat(root_fd)
        self._root_fd = root_fd
        self._sink = sink
        self._tree = BackingTree(root_fd, InodeTable(key_of(root)), recorder)
        self._attr_timeout = attr_timeout
        self._entry_timeout = entry_timeout
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, OpenDir] = {}
        self._next_dir_handle = 1
        self.local_sync = LocalSync()
        self.requests_in_progress = 0

    def knows(self, ino: int) -> bool:
        """The inode table still holds ``ino`` (the kernel has not forgotten it)."""
        return ino in self._tree.table

    # -- helpers (all synchronous: they run inside a handler's atomic step) --------------

    def _nothing_else_in_progress(self) -> bool:
        return self.requests_in_progress <= 1

    def _entry_of(self, st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
        return entry_attributes(st, ino, self._entry_timeout, self._attr_timeout)

    def _new_entry(self, st: os.stat_result, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        node = self._tree.table.learn(key_of(st), parent, name)
        node.lookups += 1
        return self._entry_of(st, node.ino)

    # -- namespace --------------------------------------------------------------------------

    @boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._tree.child(parent_inode, name)
        try:
            st = self._tree.lstat(path)
        except FileNotFoundError:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self._entry_timeout
            return negative
        return self._new_entry(st, parent_inode, name)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self._tree.table.forget(ino, count)
            if ino in self._tree.orphans and ino not in self._tree.table:
                os.close(self._tree.orphans.pop(ino))

    @boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry_of(self._tree.stat_node(inode), inode)

    @boundary
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        open_file = self._files.get(fh) if fh is not None else None
        # fchmod/fchown reach us without a handle: an object removed while in use has no path,
        # but a descriptor we hold on it will do
        target: int | bytes
        if open_file is not None:
            target, dir_fd, follow = open_file.fd, None, True
        else:
            target, dir_fd, follow = self._tree.reach(inode)
        before = os.stat(target, dir_fd=dir_fd, follow_symlinks=follow)

        size = attr.st_size if fields.update_size else None
        journal_path = self._tree.name_for_journal(inode, open_file.fd if open_file else None)
        links = 1 if stat.S_ISDIR(before.st_mode) else before.st_nlink
        if size is not None:
            self._tree.intend(ChangeKind.RESIZE, journal_path, links, offset=size)
        self._tree.intend(ChangeKind.METADATA, journal_path, links)
        if size is not None:
            truncate(target, size, dir_fd)
        uid = attr.st_uid if fields.update_uid else -1
        gid = attr.st_gid if fields.update_gid else -1
        if uid != -1 or gid != -1:
            os.chown(target, uid, gid, dir_fd=dir_fd, follow_symlinks=follow)
        mode = stat.S_IMODE(attr.st_mode) if fields.update_mode else None
        if mode is not None:
            os.chmod(target, mode, dir_fd=dir_fd)
        if (
            uid == -1
            and gid == -1
            and mode is None
            and size is None
            and not (fields.update_atime or fields.update_mtime)
        ):
            # nothing but "status changed" (chown(f, -1, -1) arrives so): a no-op chown marks it
            os.chown(target, -1, -1, dir_fd=dir_fd, follow_symlinks=follow)
        if fields.update_atime or fields.update_mtime:
            atime = attr.st_atime_ns if fields.update_atime else before.st_atime_ns
            mtime = attr.st_mtime_ns if fields.update_mtime else before.st_mtime_ns
            os.utime(target, ns=(atime, mtime), dir_fd=dir_fd, follow_symlinks=follow)

        after = os.stat(target, dir_fd=dir_fd, follow_symlinks=follow)
        changed = size is not None or uid != -1 or gid != -1 or mode is not None
        if changed or fields.update_atime or fields.update_mtime:
            path = self._tree.mutation_path(inode, after.st_nlink)
            if path is not None:
                # a symlink's mode means nothing, and replaying a chmod on one would follow it
                owner_or_mode_changed = (uid != -1 or gid != -1 or mode is not None) and not (
                    stat.S_ISLNK(after.st_mode)
                )
                mutation = SetAttributes(
                    path,
                    mode=stat.S_IMODE(after.st_mode) if owner_or_mode_changed else None,
                    uid=after.st_uid if uid != -1 else None,
                    gid=after.st_gid if gid != -1 else None,
                    size=size,
                    stamps=(stamp_of(path, after),),
                )
                await self._sink.submit(mutation).wait()
        return self._entry_of(after, inode)

    @boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        dir_fd, name = self._tree.locate(self._tree.path(inode))
        return os.readlink(name, dir_fd=dir_fd)

    async def _announce_new(
        self,
        path: bytes,
        parent: int,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
        describe: Callable[[os.stat_result, tuple[Stamp, Stamp]], Mutation],
    ) -> pyfuse3.EntryAttributes:
        st, stamps = adopt_new(
            self._tree.locate, path, self._tree.path(parent), mode, ctx.uid, ctx.gid
        )
        entry = self._new_entry(st, parent, name)
        await self._sink.submit(describe(st, stamps)).wait()
        return entry

    @boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._tree.child(parent_inode, name)
        self._tree.intend(ChangeKind.CREATE, path)
        dir_fd, rel = self._tree.locate(path)
        os.mknod(rel, mode, rdev, dir_fd=dir_fd)
        return await self._announce_new(
            path, parent_inode, name, mode, ctx,
            lambda st, stamps: MakeNode(path, st.st_mode, st.st_rdev, st.st_uid, st.st_gid, stamps),
        )  # fmt: skip

    @boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._tree.child(parent_inode, name)
        self._tree.intend(ChangeKind.CREATE, path)
        dir_fd, rel = self._tree.locate(path)
        os.mkdir(rel, mode & 0o7777, dir_fd=dir_fd)
        return await self._announce_new(
            path, parent_inode, name, mode, ctx,
            lambda st, stamps: MakeDirectory(
                path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, stamps
            ),
        )  # fmt: skip

    @boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._tree.child(parent_inode, name)
        self._tree.intend(ChangeKind.CREATE, path)
        dir_fd, rel = self._tree.locate(path)
        os.symlink(target, rel, dir_fd=dir_fd)
        return await self._announce_new(
            path, parent_inode, name, 0o777, ctx,
            lambda st, stamps: MakeSymlink(path, target, st.st_uid, st.st_gid, stamps),
        )  # fmt: skip

    @boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        existing = self._tree.path(inode)
        path = self._tree.child(new_parent_inode, new_name)
        change = Change(ChangeKind.LINK, existing, path)
        self._tree.recorder.intend(change)
        (src_fd, src), (dst_fd, dst) = self._tree.locate(existing), self._tree.locate(path)
        os.link(src, dst, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        self._tree.recorder.done(change)
        st = self._tree.lstat(path)
        entry = self._new_entry(st, new_parent_inode, new_name)
        mutation = MakeHardLink(existing, path, stamps=(self._tree.parent_stamp(new_parent_inode),))
        await self._sink.submit(mutation).wait()
        return entry

    def _keep_reachable(self, path: bytes, st: os.stat_result) -> None:
        """Called before the last name of an object goes. Regular files need nothing: the
        kernel reaches them only through handles we opened. Others it opens by itself."""
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            return
        node = self._tree.table.find(key_of(st))
        if node is None or node.lookups <= 0 or node.ino in self._tree.orphans:
            return
        flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
        dir_fd, rel = self._tree.locate(path)
        self._tree.orphans[node.ino] = os.open(rel, flags, dir_fd=dir_fd)

    async def _remove(self, parent_inode: int, name: bytes, directory: bool) -> None:
        path = self._tree.child(parent_inode, name)
        st = self._tree.lstat(path)
        if directory or st.st_nlink <= 1:
            self._keep_reachable(path, st)
        self._tree.intend(ChangeKind.REMOVE, path)
        dir_fd, rel = self._tree.locate(path)
        if directory:
            os.rmdir(rel, dir_fd=dir_fd)
            self._tree.moved_or_removed()
        else:
            os.unlink(rel, dir_fd=dir_fd)
        self._tree.table.unlinked(
            parent_inode, name, key_of(st), object_gone=directory or st.st_nlink <= 1
        )
        stamps = (self._tree.parent_stamp(parent_inode),)
        mutation = RemoveDirectory(path, stamps) if directory else Unlink(path, stamps)
        await self._sink.submit(mutation).wait()

    @boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, directory=False)

    @boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, directory=True)

    @boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old = self._tree.child(parent_inode_old, name_old)
        new = self._tree.child(parent_inode_new, name_new)
        moved = self._tree.lstat(old)
        try:
            replaced: os.stat_result | None = self._tree.lstat(new)
        except FileNotFoundError:
            replaced = None
        replaced_gone = replaced is not None and (
            stat.S_ISDIR(replaced.st_mode) or replaced.st_nlink <= 1
        )
        if replaced is not None and replaced_gone and not flags & RENAME_EXCHANGE:
            self._keep_reachable(new, replaced)
        exchange = bool(flags & RENAME_EXCHANGE)
        change = Change(ChangeKind.EXCHANGE if exchange else ChangeKind.RENAME, old, new)
        self._tree.recorder.intend(change)
        (old_fd, old_rel), (new_fd, new_rel) = self._tree.locate(old), self._tree.locate(new)
        try:
            if flags:
                renameat2(old_fd, old_rel, new_fd, new_rel, flags)
            else:
                os.rename(old_rel, new_rel, src_dir_fd=old_fd, dst_dir_fd=new_fd)
        finally:
            self._tree.moved_or_removed()
        self._tree.recorder.done(change)
        self._tree.table.renamed(
            (parent_inode_old, name_old),
            (parent_inode_new, name_new),
            key_of(moved),
            key_of(replaced) if replaced is not None else None,
            replaced_gone=replaced_gone,
            exchange=bool(flags & RENAME_EXCHANGE),
        )
        stamps = [self._tree.parent_stamp(parent_inode_old)]
        if parent_inode_new != parent_inode_old:
            stamps.append(self._tree.parent_stamp(parent_inode_new))
        await self._sink.submit(Rename(old, new, flags, tuple(stamps))).wait()

    # -- files ------------------------------------------------------------------------------

    def _register(
        self, fd: int, ino: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        self._files[fd] = OpenFile(
            fd, ino, bool(flags & os.O_APPEND), synchronous=bool(flags & os.O_DSYNC)
        )
        self._tree.fds_by_ino.setdefault(ino, set()).add(fd)
        info = pyfuse3.FileInfo(fh=fd)
        # Every change passes through us, so cached pages stay valid across opens.
        info.keep_cache = True
        info.direct_io = bool(flags & os.O_DIRECT)
        return info

    @boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        backing_flags = (flags & ~_OPEN_FLAGS_DROPPED) | os.O_CLOEXEC | os.O_NOFOLLOW
        path = self._tree.table.path(inode)
        if flags & os.O_TRUNC:
            journal_path = self._tree.name_for_journal(inode)
            self._tree.intend(ChangeKind.RESIZE, journal_path, self._tree.links_of(inode), offset=0)
        if path is not None:
            # beneath the root, through no symlink: a second line of defence should the backing
            # tree be changed behind the mount (the kernel itself never asks us past a symlink)
            fd = open_beneath(self._root_fd, path, backing_flags)
        else:
            # reopened through /proc/PID/fd after unlink: reopen our own descriptor likewise
            alive = self._tree.any_fd(inode)
            if alive is None:
                raise FUSEError(errno.ENOENT)
            fd = os.open(f"/proc/self/fd/{alive}", backing_flags & ~os.O_NOFOLLOW)
        try:
            info = self._register(fd, inode, flags, ctx)
        except BaseException:
            os.close(fd)
            raise
        if flags & os.O_TRUNC:
            st = os.fstat(fd)
            truncated = self._tree.mutation_path(inode, st.st_nlink)
            if truncated is not None:
                await self._sink.submit(
                    SetAttributes(truncated, size=0, stamps=(stamp_of(truncated, st),))
                ).wait()
        return info

    @boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._tree.child(parent_inode, name)
        backing_flags = (flags & ~_OPEN_FLAGS_DROPPED) | os.O_CLOEXEC | os.O_NOFOLLOW
        self._tree.intend(ChangeKind.CREATE, path)
        try:
            fd = open_beneath(
                self._root_fd, path, backing_flags | os.O_CREAT | os.O_EXCL, mode & 0o7777
            )
            created = True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd = open_beneath(self._root_fd, path, backing_flags)
            created = False
        try:
            stamps: tuple[Stamp, ...] = ()
            if created:
                st, stamps = adopt_new(
                    self._tree.locate, path, self._tree.path(parent_inode), mode, ctx.uid, ctx.gid
                )
            else:
                st = os.fstat(fd)
            entry = self._new_entry(st, parent_inode, name)
            info = self._register(fd, entry.st_ino, flags, ctx)
        except BaseException:
            os.close(fd)
            raise
        if created:
            mode_bits = stat.S_IMODE(st.st_mode)
            await self._sink.submit(
                CreateFile(path, mode_bits, st.st_uid, st.st_gid, stamps)
            ).wait()
        elif flags & os.O_TRUNC:
            await self._sink.submit(
                SetAttributes(path, size=0, stamps=(stamp_of(path, st),))
            ).wait()
        return info, entry

    @boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        open_file = self._files[fh]
        if self._tree.recorder is not NO_RECORDER:
            before = os.fstat(fh)
            start = before.st_size if open_file.append else off
            journal_path = self._tree.name_for_journal(open_file.ino, fh)
            self._tree.intend(
                ChangeKind.WRITE, journal_path, before.st_nlink, offset=start, length=len(buf)
            )
        written = os.pwrite(fh, buf, off)
        self.local_sync.wrote(open_file.ino, written)
        st = os.fstat(fh)
        if open_file.append:
            off = st.st_size - written  # O_APPEND wrote at the end, whatever offset was asked
        path = self._tree.mutation_path(open_file.ino, st.st_nlink)
        if path is None:
            return written
        data = buf if written == len(buf) else bytes(buf[:written])
        receipt = self._sink.submit(Write(path, off, data, (stamp_of(path, st),)))
        # taken in the same step as the write: an O_SYNC/O_DSYNC write is its own fdatasync,
        # which at the fsync sync point waits for the peer to hold everything before it (D33)
        settled = self._sink.settle() if open_file.synchronous else DONE
        await receipt.wait()
        await settled.wait()
        return written

    @boundary
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        """fallocate(2), every mode; reached through the native driver only (pyfuse3 has no
        such request: under the Python driver the kernel answers EOPNOTSUPP itself)."""
        accepts = getattr(self._sink, "accepts", None)
        if accepts is not None and not accepts(Allocate):
            raise FUSEError(errno.EOPNOTSUPP)  # the peer's release cannot replay it
        open_file = self._files[fh]
        if self._tree.recorder is not NO_RECORDER:
            before = os.fstat(fh)
            journal_path = self._tree.name_for_journal(open_file.ino, fh)
            shifts = mode & (FALLOC_FL_COLLAPSE_RANGE | FALLOC_FL_INSERT_RANGE)
            # a collapse or an insert moves every byte after the range
            length_changed = max(before.st_size, offset + length) - offset if shifts else length
            self._tree.intend(
                ChangeKind.WRITE, journal_path, before.st_nlink, offset=offset,
                length=length_changed,
            )  # fmt: skip
            if shifts:
                self._tree.intend(ChangeKind.RESIZE, journal_path, before.st_nlink, offset=0)
        fallocate(fh, mode, offset, length)
        st = os.fstat(fh)
        path = self._tree.mutation_path(open_file.ino, st.st_nlink)
        if path is not None:
            mutation = Allocate(path, mode, offset, length, (stamp_of(path, st),))
            receipt = self._sink.submit(mutation)
            settled = self._sink.settle() if open_file.synchronous else DONE
            await receipt.wait()
            await settled.wait()

    @boundary
    async def copy_file_range(
        self, fh_in: int, offset_in: int, fh_out: int, offset_out: int, length: int, flags: int
    ) -> int:
        """copy_file_range(2) between two files of the mount (native driver only): copied on
        the backing files, then the copied bytes go to the peer as writes."""
        out = self._files[fh_out]
        if self._tree.recorder is not NO_RECORDER:
            before = os.fstat(fh_out)
            journal_path = self._tree.name_for_journal(out.ino, fh_out)
            self._tree.intend(
                ChangeKind.WRITE, journal_path, before.st_nlink, offset=offset_out, length=length
            )
        copied = os.copy_file_range(fh_in, fh_out, length, offset_in, offset_out)
        self.local_sync.wrote(out.ino, copied)
        st = os.fstat(fh_out)
        path = self._tree.mutation_path(out.ino, st.st_nlink)
        if path is None or copied == 0:
            return copied
        receipts = []
        done = 0
        while done < copied:
            # what the copy wrote, read in pieces a frame carries easily from the source (the
            # target may be open write-only; the ranges cannot overlap, so the source is as
            # it was copied)
            piece = os.pread(fh_in, min(copied - done, _COPY_PIECE), offset_in + done)
            if not piece:
                break
            stamps = (stamp_of(path, st),) if done + len(piece) >= copied else ()
            receipts.append(self._sink.submit(Write(path, offset_out + done, piece, stamps)))
            done += len(piece)
        if out.synchronous:
            receipts.append(self._sink.settle())
        for receipt in receipts:
            await receipt.wait()
        return copied

    @boundary
    async def flush(self, fh: int) -> None:
        # close(2) changes nothing we replicate and we hold no locks to drop: ENOSYS makes the
        # kernel stop sending FLUSH, one round trip less on every close
        raise FUSEError(errno.ENOSYS)

    @boundary
    async def release(self, fh: int) -> None:
        open_file = self._files.pop(fh)
        fds = self._tree.fds_by_ino.get(open_file.ino)
        if fds is not None:
            fds.discard(fh)
            if not fds:
                del self._tree.fds_by_ino[open_file.ino]
                self.local_sync.forget(open_file.ino)
        os.close(fh)

    @boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        open_file = self._files[fh]
        path = self._tree.mutation_path(open_file.ino, os.fstat(fh).st_nlink)
        # the peer syncs its copy while this node syncs its own
        peer_synced = DONE if path is None else self._sink.submit(Sync(path, datasync))
        await self.local_sync.sync(fh, open_file.ino, datasync, self._nothing_else_in_progress())
        await peer_synced.wait()

    # -- directories ------------------------------------------------------------------------

    @boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        target, dir_fd, _ = self._tree.reach(inode)  # a removed directory can still be listed
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
        if isinstance(target, int):  # removed: its own descriptor, by its magic link
            fd = os.open(b"/proc/self/fd/%d" % target, flags)
        elif dir_fd is not None:  # beneath the root, or a directory kept for a long path
            fd = open_beneath(dir_fd, target, flags)
        else:  # removed: reached through an orphan's magic link
            fd = os.open(target, flags)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._dirs[handle] = OpenDir(fd, inode)
        return handle

    def _dot_entries(self, directory: OpenDir) -> dict[bytes, pyfuse3.EntryAttributes]:
        here = self._entry_of(os.fstat(directory.fd), directory.ino)
        if directory.ino == ROOT_INODE:
            # the directory the mount sits in is outside the mount: its ".." is safe to stat
            up = self._entry_of(
                os.stat(b"..", dir_fd=self._root_fd, follow_symlinks=False), ROOT_INODE
            )
        else:
            # Never stat ".." of a backing directory: the walk would climb onto the backing root,
            # cross into our own mount and wait on ourselves forever.
            parent = next(iter(self._tree.table.get(directory.ino).links), (ROOT_INODE, b""))[0]
            up = self._entry_of(self._tree.stat_node(parent), parent)
        return {b".": here, b"..": up}

    @boundary
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        directory = self._dirs[fh]
        if start_id == 0 or directory.names is None:
            # A snapshot per pass keeps offsets stable while entries come and go (POSIX lets
            # a listing omit entries added after it started; it must not skip or repeat one).
            with os.scandir(directory.fd) as entries:
                directory.names = [b".", b".."] + [os.fsencode(e.name) for e in entries]
        names = directory.names
        dots = self._dot_entries(directory) if start_id < 2 else {}
        for index in range(start_id, len(names)):
            name = names[index]
            if name in dots:
                if not _add_entry(token, name, dots[name], index + 1):
                    return
                continue
            try:
                st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            node = self._tree.table.learn(key_of(st), directory.ino, name)
            if not _add_entry(token, name, self._entry_of(st, node.ino), index + 1):
                self._tree.table.discard_if_unreferenced(node)
                return
            node.lookups += 1

    @boundary
    async def releasedir(self, fh: int) -> None:
        os.close(self._dirs.pop(fh).fd)

    @boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        directory = self._dirs[fh]
        path = self._tree.table.path(directory.ino)
        peer_synced = DONE if path is None else self._sink.submit(Sync(path, datasync))
        await self.local_sync.sync(
            directory.fd, directory.ino, False, self._nothing_else_in_progress()
        )
        await peer_synced.wait()

    @boundary
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        backing = os.fstatvfs(self._root_fd)
        result = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
            "f_namemax",
        ):
            setattr(result, name, getattr(backing, name))
        return result

    # -- extended attributes ----------------------------------------------------------------

    def _xattr_target(self, inode: int) -> tuple[int | bytes, bool]:
        """(path or fd, follow symlinks) for the os.*xattr calls, which take no dir_fd."""
        target, dir_fd, follow = self._tree.reach(inode)
        if dir_fd is not None:
            # reach the hidden backing tree through our root descriptor
            return b"/proc/self/fd/%d/%s" % (dir_fd, target), follow
        return target, follow

    @boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        target, follow = self._xattr_target(inode)
        self._tree.table.get(inode).no_capability_xattr = False
        journal_path = self._tree.name_for_journal(inode)
        self._tree.intend(ChangeKind.METADATA, journal_path, self._tree.links_of(inode))
        os.setxattr(target, name, value, follow_symlinks=follow)
        st = self._tree.stat_node(inode)
        path = self._tree.mutation_path(inode, st.st_nlink)
        if path is not None:
            await self._sink.submit(SetXattr(path, name, value, (stamp_of(path, st),))).wait()

    @boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        capability = name == CAPABILITY_XATTR
        if capability and self._tree.table.get(inode).no_capability_xattr:
            raise FUSEError(errno.ENODATA)
        target, follow = self._xattr_target(inode)
        try:
            return os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if capability and exc.errno == errno.ENODATA:
                self._tree.table.get(inode).no_capability_xattr = True
            raise

    @boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        target, follow = self._xattr_target(inode)
        names = os.listxattr(target, follow_symlinks=follow)
        return [os.fsencode(n) for n in names]

    @boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        target, follow = self._xattr_target(inode)
        journal_path = self._tree.name_for_journal(inode)
        self._tree.intend(ChangeKind.METADATA, journal_path, self._tree.links_of(inode))
        os.removexattr(target, name, follow_symlinks=follow)
        st = self._tree.stat_node(inode)
        path = self._tree.mutation_path(inode, st.st_nlink)
        if path is not None:
            await self._sink.submit(RemoveXattr(path, name, (stamp_of(path, st),))).wait()

    @boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only reached without default_permissions (we always mount with it); kept exact anyway.
        st = self._tree.stat_node(inode)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
        if st.st_uid == ctx.uid:
            granted = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            granted = (st.st_mode >> 3) & 7
        else:
            granted = st.st_mode & 7
        return (mode & granted) == mode
