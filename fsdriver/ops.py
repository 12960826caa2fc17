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
import functools
import logging
import os
import stat
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ParamSpec, TypeVar

import pyfuse3
from pyfuse3 import FUSEError

from tandem.fsdriver.change import NO_RECORDER, Change, ChangeKind, ChangeRecorder
from tandem.fsdriver.inode import ROOT_INODE, InodeTable, Key, Node
from tandem.fsdriver.local_sync import LocalSync
from tandem.fsdriver.mutation import (
    DONE,
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
from tandem.fsdriver.syscall import RENAME_EXCHANGE, renameat2

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_P = ParamSpec("_P")
# flags that make sense only to the kernel side of the open, or that our buffers cannot honour
# (O_DIRECT needs aligned memory; the kernel gives the application direct I/O itself)
CAPABILITY_XATTR = b"security.capability"
_OPEN_FLAGS_DROPPED = os.O_CREAT | os.O_EXCL | os.O_NOCTTY | os.O_DIRECT


def _boundary(
    handler: Callable[_P, Coroutine[Any, Any, _T]],
) -> Callable[_P, Coroutine[Any, Any, _T]]:
    """The one place errors are translated: an OSError keeps its errno, anything else is a bug
    that is logged and becomes EIO, so a handler can never take the mount down. It also counts
    the requests in progress (`Passthrough.requests_in_progress`)."""
    name = handler.__name__

    @functools.wraps(handler)
    async def guarded(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        ops: Passthrough = args[0]  # type: ignore[assignment]
        ops.requests_in_progress += 1
        try:
            return await handler(*args, **kwargs)
        except FUSEError:
            raise
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception:
            shown = tuple(
                f"<{len(a)} bytes>" if isinstance(a, bytes | memoryview) and len(a) > 64 else a
                for a in args[1:]
            )
            log.exception("unexpected error in %s%r; answering EIO", name, shown)
            raise FUSEError(errno.EIO) from None
        finally:
            ops.requests_in_progress -= 1

    return guarded


def _key(st: os.stat_result) -> Key:
    return (st.st_dev, st.st_ino)


def _stamp(path: bytes, st: os.stat_result) -> Stamp:
    return Stamp(path, st.st_atime_ns, st.st_mtime_ns)


class _OpenFile:
    __slots__ = ("append", "fd", "ino")

    def __init__(self, fd: int, ino: int, append: bool) -> None:
        self.fd = fd
        self.ino = ino
        self.append = append


class _OpenDir:
    __slots__ = ("fd", "ino", "names")

    def __init__(self, fd: int, ino: int) -> None:
        self.fd = fd
        self.ino = ino
        self.names: list[bytes] | None = None


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
        self._recorder = recorder
        root = os.fstat(root_fd)
        self._root_fd = root_fd
        self._sink = sink
        self._table = InodeTable(_key(root))
        self._attr_timeout = attr_timeout
        self._entry_timeout = entry_timeout
        self._files: dict[int, _OpenFile] = {}
        self._fds_by_ino: dict[int, set[int]] = {}
        self._dirs: dict[int, _OpenDir] = {}
        # O_PATH descriptors on removed fifos, sockets, devices and directories the kernel still
        # references: it opens those without us, so nothing else would let us reach them
        self._orphans: dict[int, int] = {}
        self._next_dir_handle = 1
        self.local_sync = LocalSync()
        self.requests_in_progress = 0

    # -- helpers (all synchronous: they run inside a handler's atomic step) --------------

    def _nothing_else_in_progress(self) -> bool:
        return self.requests_in_progress <= 1

    def _lstat(self, path: bytes) -> os.stat_result:
        return os.stat(path, dir_fd=self._root_fd, follow_symlinks=False)

    def _entry(self, st: os.stat_result, ino: int) -> pyfuse3.EntryAttributes:
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = ino
        entry.generation = 0
        entry.entry_timeout = self._entry_timeout
        entry.attr_timeout = self._attr_timeout
        entry.st_mode = st.st_mode
        entry.st_nlink = st.st_nlink
        entry.st_uid = st.st_uid
        entry.st_gid = st.st_gid
        entry.st_rdev = st.st_rdev
        entry.st_size = st.st_size
        entry.st_blksize = st.st_blksize
        entry.st_blocks = st.st_blocks
        entry.st_atime_ns = st.st_atime_ns
        entry.st_mtime_ns = st.st_mtime_ns
        entry.st_ctime_ns = st.st_ctime_ns
        return entry

    def _path(self, ino: int) -> bytes:
        path = self._table.path(ino)
        if path is None:
            raise FUSEError(errno.ENOENT)
        return path

    def _child(self, parent: int, name: bytes) -> bytes:
        path = self._table.child_path(parent, name)
        if path is None:
            raise FUSEError(errno.ENOENT)
        return path

    def _any_fd(self, ino: int) -> int | None:
        fds = self._fds_by_ino.get(ino)
        return next(iter(fds)) if fds else None

    def _reach(self, ino: int) -> tuple[int | bytes, int | None, bool]:
        """How to act on an object without a handle: (path or fd, dir_fd, follow symlinks)."""
        path = self._table.path(ino)
        if path is not None:
            return path, self._root_fd, False
        fd = self._any_fd(ino)
        if fd is not None:
            return fd, None, True
        orphan = self._orphans.get(ino)
        if orphan is not None:
            return b"/proc/self/fd/%d" % orphan, None, True
        raise FUSEError(errno.ENOENT)

    def _stat_node(self, ino: int) -> os.stat_result:
        """Attributes of an object, even one that was removed while in use."""
        target, dir_fd, follow = self._reach(ino)
        st = os.stat(target, dir_fd=dir_fd, follow_symlinks=follow)
        if ino == ROOT_INODE or _key(st) == self._table.get(ino).key:
            return st
        raise FUSEError(errno.ESTALE)

    def _mutation_path(self, ino: int, nlink: int) -> bytes | None:
        """Where a peer finds this object, or None when it has no name left (its changes can
        no longer reach any file that survives, so they need not be replicated)."""
        path = self._table.path(ino)
        if path is not None or nlink == 0:
            return path
        # A hard link we never looked up keeps the object alive: find it by scanning.
        node = self._table.get(ino)
        return self._rediscover(node)

    def _name_for_journal(self, ino: int, fd: int | None = None) -> bytes | None:
        """The path a change to ``ino`` is about to touch, found *before* the change (the
        journal must hear of it first). None: no name left, nothing a peer could see."""
        if self._recorder is NO_RECORDER:
            return None  # nobody listens: spare the lookup (it may scan for a hard link)
        path = self._table.path(ino)
        if path is not None:
            return path
        nlink = os.fstat(fd).st_nlink if fd is not None else self._stat_node(ino).st_nlink
        return self._mutation_path(ino, nlink)

    def _intend(self, kind: ChangeKind, path: bytes | None, nlink: int = 1, **where: Any) -> None:
        if path is not None:
            if nlink > 1:
                # the journal names changes by path: this file's other names never show
                self._recorder.intend(Change(ChangeKind.SHARED, path))
            self._recorder.intend(Change(kind, path, **where))

    def _links_of(self, inode: int) -> int:
        """How many names the object has (only asked when a journal listens)."""
        if self._recorder is NO_RECORDER:
            return 1
        try:
            return self._stat_node(inode).st_nlink
        except OSError:
            return 1

    def _rediscover(self, node: Node) -> bytes | None:
        pending: list[bytes] = [b"."]
        while pending:
            directory = pending.pop()
            try:
                fd = os.open(
                    directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self._root_fd
                )
            except OSError:
                continue
            try:
                with os.scandir(fd) as entries:
                    for entry in entries:
                        name = os.fsencode(entry.name)
                        path = name if directory == b"." else directory + b"/" + name
                        st = entry.stat(follow_symlinks=False)
                        if _key(st) == node.key:
                            log.info("found a name for inode %d by scanning: %r", node.ino, path)
                            return path
                        if stat.S_ISDIR(st.st_mode) and st.st_dev == node.key[0]:
                            pending.append(path)
            finally:
                os.close(fd)
        return None

    def _parent_stamp(self, parent: int) -> Stamp:
        path = self._path(parent)
        return _stamp(path, self._lstat(path))

    def _adopt_new(
        self, path: bytes, parent: int, mode: int, ctx: pyfuse3.RequestContext
    ) -> tuple[os.stat_result, tuple[Stamp, Stamp]]:
        """Give an object we created as root the owner and mode the caller would have got.
        Returns its attributes and the stamps (its own, its parent's) its mutation carries."""
        parent_path = self._path(parent)
        parent_st = self._lstat(parent_path)
        st = self._lstat(path)
        parent_setgid = bool(parent_st.st_mode & stat.S_ISGID)
        gid = parent_st.st_gid if parent_setgid else ctx.gid
        changed = False
        if (st.st_uid, st.st_gid) != (ctx.uid, gid):
            os.chown(path, ctx.uid, gid, dir_fd=self._root_fd, follow_symlinks=False)
            changed = True
        if not stat.S_ISLNK(st.st_mode):
            wanted = mode & 0o7777
            if stat.S_ISDIR(st.st_mode) and parent_setgid:
                wanted |= stat.S_ISGID
            if changed:
                st = self._lstat(path)  # chown as root clears set-id bits the caller may keep
            if stat.S_IMODE(st.st_mode) != wanted:
                os.chmod(path, wanted, dir_fd=self._root_fd)
                changed = True
        if changed:
            st = self._lstat(path)
        return st, (_stamp(path, st), _stamp(parent_path, parent_st))

    def _truncate(self, target: int | bytes, size: int, dir_fd: int | None) -> None:
        if isinstance(target, int):
            os.ftruncate(target, size)
            return
        fd = os.open(target, os.O_WRONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.ftruncate(fd, size)
        finally:
            os.close(fd)

    def _new_entry(self, st: os.stat_result, parent: int, name: bytes) -> pyfuse3.EntryAttributes:
        node = self._table.learn(_key(st), parent, name)
        node.lookups += 1
        return self._entry(st, node.ino)

    # -- namespace --------------------------------------------------------------------------

    @_boundary
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        try:
            st = self._lstat(path)
        except FileNotFoundError:
            negative = pyfuse3.EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = self._entry_timeout
            return negative
        return self._new_entry(st, parent_inode, name)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self._table.forget(ino, count)
            if ino in self._orphans and ino not in self._table:
                os.close(self._orphans.pop(ino))

    @_boundary
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._stat_node(inode), inode)

    @_boundary
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
            target, dir_fd, follow = self._reach(inode)
        before = os.stat(target, dir_fd=dir_fd, follow_symlinks=follow)

        size = attr.st_size if fields.update_size else None
        journal_path = self._name_for_journal(inode, open_file.fd if open_file else None)
        links = 1 if stat.S_ISDIR(before.st_mode) else before.st_nlink
        if size is not None:
            self._intend(ChangeKind.RESIZE, journal_path, links, offset=size)
        self._intend(ChangeKind.METADATA, journal_path, links)
        if size is not None:
            self._truncate(target, size, dir_fd)
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
            path = self._mutation_path(inode, after.st_nlink)
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
                    stamps=(_stamp(path, after),),
                )
                await self._sink.submit(mutation).wait()
        return self._entry(after, inode)

    @_boundary
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return os.readlink(self._path(inode), dir_fd=self._root_fd)

    async def _announce_new(
        self,
        path: bytes,
        parent: int,
        name: bytes,
        mode: int,
        ctx: pyfuse3.RequestContext,
        describe: Callable[[os.stat_result, tuple[Stamp, Stamp]], Mutation],
    ) -> pyfuse3.EntryAttributes:
        st, stamps = self._adopt_new(path, parent, mode, ctx)
        entry = self._new_entry(st, parent, name)
        await self._sink.submit(describe(st, stamps)).wait()
        return entry

    @_boundary
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        self._intend(ChangeKind.CREATE, path)
        os.mknod(path, mode, rdev, dir_fd=self._root_fd)
        return await self._announce_new(
            path, parent_inode, name, mode, ctx,
            lambda st, stamps: MakeNode(path, st.st_mode, st.st_rdev, st.st_uid, st.st_gid, stamps),
        )  # fmt: skip

    @_boundary
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        self._intend(ChangeKind.CREATE, path)
        os.mkdir(path, mode & 0o7777, dir_fd=self._root_fd)
        return await self._announce_new(
            path, parent_inode, name, mode, ctx,
            lambda st, stamps: MakeDirectory(
                path, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, stamps
            ),
        )  # fmt: skip

    @_boundary
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        path = self._child(parent_inode, name)
        self._intend(ChangeKind.CREATE, path)
        os.symlink(target, path, dir_fd=self._root_fd)
        return await self._announce_new(
            path, parent_inode, name, 0o777, ctx,
            lambda st, stamps: MakeSymlink(path, target, st.st_uid, st.st_gid, stamps),
        )  # fmt: skip

    @_boundary
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        existing = self._path(inode)
        path = self._child(new_parent_inode, new_name)
        change = Change(ChangeKind.LINK, existing, path)
        self._recorder.intend(change)
        os.link(
            existing,
            path,
            src_dir_fd=self._root_fd,
            dst_dir_fd=self._root_fd,
            follow_symlinks=False,
        )
        self._recorder.done(change)
        st = self._lstat(path)
        entry = self._new_entry(st, new_parent_inode, new_name)
        mutation = MakeHardLink(existing, path, stamps=(self._parent_stamp(new_parent_inode),))
        await self._sink.submit(mutation).wait()
        return entry

    def _keep_reachable(self, path: bytes, st: os.stat_result) -> None:
        """Called before the last name of an object goes. Regular files need nothing: the
        kernel reaches them only through handles we opened. Others it opens by itself."""
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            return
        node = self._table.find(_key(st))
        if node is None or node.lookups <= 0 or node.ino in self._orphans:
            return
        flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
        self._orphans[node.ino] = os.open(path, flags, dir_fd=self._root_fd)

    async def _remove(self, parent_inode: int, name: bytes, directory: bool) -> None:
        path = self._child(parent_inode, name)
        st = self._lstat(path)
        if directory or st.st_nlink <= 1:
            self._keep_reachable(path, st)
        self._intend(ChangeKind.REMOVE, path)
        if directory:
            os.rmdir(path, dir_fd=self._root_fd)
        else:
            os.unlink(path, dir_fd=self._root_fd)
        self._table.unlinked(
            parent_inode, name, _key(st), object_gone=directory or st.st_nlink <= 1
        )
        stamps = (self._parent_stamp(parent_inode),)
        mutation = RemoveDirectory(path, stamps) if directory else Unlink(path, stamps)
        await self._sink.submit(mutation).wait()

    @_boundary
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, directory=False)

    @_boundary
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, directory=True)

    @_boundary
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        old = self._child(parent_inode_old, name_old)
        new = self._child(parent_inode_new, name_new)
        moved = self._lstat(old)
        try:
            replaced: os.stat_result | None = self._lstat(new)
        except FileNotFoundError:
            replaced = None
        replaced_gone = replaced is not None and (
            stat.S_ISDIR(replaced.st_mode) or replaced.st_nlink <= 1
        )
        if replaced is not None and replaced_gone and not flags & RENAME_EXCHANGE:
            self._keep_reachable(new, replaced)
        exchange = bool(flags & RENAME_EXCHANGE)
        change = Change(ChangeKind.EXCHANGE if exchange else ChangeKind.RENAME, old, new)
        self._recorder.intend(change)
        if flags:
            renameat2(self._root_fd, old, self._root_fd, new, flags)
        else:
            os.rename(old, new, src_dir_fd=self._root_fd, dst_dir_fd=self._root_fd)
        self._recorder.done(change)
        self._table.renamed(
            (parent_inode_old, name_old),
            (parent_inode_new, name_new),
            _key(moved),
            _key(replaced) if replaced is not None else None,
            replaced_gone=replaced_gone,
            exchange=bool(flags & RENAME_EXCHANGE),
        )
        stamps = [self._parent_stamp(parent_inode_old)]
        if parent_inode_new != parent_inode_old:
            stamps.append(self._parent_stamp(parent_inode_new))
        await self._sink.submit(Rename(old, new, flags, tuple(stamps))).wait()

    # -- files ------------------------------------------------------------------------------

    def _register(
        self, fd: int, ino: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        self._files[fd] = _OpenFile(fd, ino, bool(flags & os.O_APPEND))
        self._fds_by_ino.setdefault(ino, set()).add(fd)
        info = pyfuse3.FileInfo(fh=fd)
        # Every change passes through us, so cached pages stay valid across opens.
        info.keep_cache = True
        info.direct_io = bool(flags & os.O_DIRECT)
        return info

    @_boundary
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        backing_flags = (flags & ~_OPEN_FLAGS_DROPPED) | os.O_CLOEXEC | os.O_NOFOLLOW
        path = self._table.path(inode)
        if flags & os.O_TRUNC:
            journal_path = self._name_for_journal(inode)
            self._intend(ChangeKind.RESIZE, journal_path, self._links_of(inode), offset=0)
        if path is not None:
            fd = os.open(path, backing_flags, dir_fd=self._root_fd)
        else:
            # reopened through /proc/PID/fd after unlink: reopen our own descriptor likewise
            alive = self._any_fd(inode)
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
            truncated = self._mutation_path(inode, st.st_nlink)
            if truncated is not None:
                await self._sink.submit(
                    SetAttributes(truncated, size=0, stamps=(_stamp(truncated, st),))
                ).wait()
        return info

    @_boundary
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        path = self._child(parent_inode, name)
        backing_flags = (flags & ~_OPEN_FLAGS_DROPPED) | os.O_CLOEXEC | os.O_NOFOLLOW
        self._intend(ChangeKind.CREATE, path)
        try:
            fd = os.open(
                path, backing_flags | os.O_CREAT | os.O_EXCL, mode & 0o7777, dir_fd=self._root_fd
            )
            created = True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            fd = os.open(path, backing_flags, dir_fd=self._root_fd)
            created = False
        try:
            stamps: tuple[Stamp, ...] = ()
            if created:
                st, stamps = self._adopt_new(path, parent_inode, mode, ctx)
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
            await self._sink.submit(SetAttributes(path, size=0, stamps=(_stamp(path, st),))).wait()
        return info, entry

    @_boundary
    async def read(self, fh: int, off: int, size: int) -> bytes:
        return os.pread(fh, size, off)

    @_boundary
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        open_file = self._files[fh]
        if self._recorder is not NO_RECORDER:
            before = os.fstat(fh)
            start = before.st_size if open_file.append else off
            journal_path = self._name_for_journal(open_file.ino, fh)
            self._intend(
                ChangeKind.WRITE, journal_path, before.st_nlink, offset=start, length=len(buf)
            )
        written = os.pwrite(fh, buf, off)
        self.local_sync.wrote(open_file.ino, written)
        st = os.fstat(fh)
        if open_file.append:
            off = st.st_size - written  # O_APPEND wrote at the end, whatever offset was asked
        path = self._mutation_path(open_file.ino, st.st_nlink)
        if path is None:
            return written
        data = buf if written == len(buf) else bytes(buf[:written])
        await self._sink.submit(Write(path, off, data, (_stamp(path, st),))).wait()
        return written

    @_boundary
    async def flush(self, fh: int) -> None:
        # close(2) changes nothing we replicate and we hold no locks to drop: ENOSYS makes the
        # kernel stop sending FLUSH, one round trip less on every close
        raise FUSEError(errno.ENOSYS)

    @_boundary
    async def release(self, fh: int) -> None:
        open_file = self._files.pop(fh)
        fds = self._fds_by_ino.get(open_file.ino)
        if fds is not None:
            fds.discard(fh)
            if not fds:
                del self._fds_by_ino[open_file.ino]
                self.local_sync.forget(open_file.ino)
        os.close(fh)

    @_boundary
    async def fsync(self, fh: int, datasync: bool) -> None:
        open_file = self._files[fh]
        path = self._mutation_path(open_file.ino, os.fstat(fh).st_nlink)
        # the peer syncs its copy while this node syncs its own
        peer_synced = DONE if path is None else self._sink.submit(Sync(path, datasync))
        await self.local_sync.sync(fh, open_file.ino, datasync, self._nothing_else_in_progress())
        await peer_synced.wait()

    # -- directories ------------------------------------------------------------------------

    @_boundary
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        target, dir_fd, _ = self._reach(inode)  # a removed directory can still be listed
        if isinstance(target, int):
            target = b"/proc/self/fd/%d" % target
        fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)
        handle = self._next_dir_handle
        self._next_dir_handle += 1
        self._dirs[handle] = _OpenDir(fd, inode)
        return handle

    def _dot_entries(self, directory: _OpenDir) -> dict[bytes, pyfuse3.EntryAttributes]:
        here = self._entry(os.fstat(directory.fd), directory.ino)
        if directory.ino == ROOT_INODE:
            # the directory the mount sits in is outside the mount: its ".." is safe to stat
            up = self._entry(
                os.stat(b"..", dir_fd=self._root_fd, follow_symlinks=False), ROOT_INODE
            )
        else:
            # Never stat ".." of a backing directory: the walk would climb onto the backing root,
            # cross into our own mount and wait on ourselves forever.
            parent = next(iter(self._table.get(directory.ino).links), (ROOT_INODE, b""))[0]
            up = self._entry(self._stat_node(parent), parent)
        return {b".": here, b"..": up}

    @_boundary
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
                if not pyfuse3.readdir_reply(token, name, dots[name], index + 1):
                    return
                continue
            try:
                st = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            node = self._table.learn(_key(st), directory.ino, name)
            if not pyfuse3.readdir_reply(token, name, self._entry(st, node.ino), index + 1):
                self._table.discard_if_unreferenced(node)
                return
            node.lookups += 1

    @_boundary
    async def releasedir(self, fh: int) -> None:
        os.close(self._dirs.pop(fh).fd)

    @_boundary
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        directory = self._dirs[fh]
        path = self._table.path(directory.ino)
        peer_synced = DONE if path is None else self._sink.submit(Sync(path, datasync))
        await self.local_sync.sync(
            directory.fd, directory.ino, False, self._nothing_else_in_progress()
        )
        await peer_synced.wait()

    @_boundary
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
        target, dir_fd, follow = self._reach(inode)
        if dir_fd is not None:
            # reach the hidden backing tree through our root descriptor
            return b"/proc/self/fd/%d/%s" % (dir_fd, target), follow
        return target, follow

    @_boundary
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        target, follow = self._xattr_target(inode)
        self._table.get(inode).no_capability_xattr = False
        journal_path = self._name_for_journal(inode)
        self._intend(ChangeKind.METADATA, journal_path, self._links_of(inode))
        os.setxattr(target, name, value, follow_symlinks=follow)
        st = self._stat_node(inode)
        path = self._mutation_path(inode, st.st_nlink)
        if path is not None:
            await self._sink.submit(SetXattr(path, name, value, (_stamp(path, st),))).wait()

    @_boundary
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        capability = name == CAPABILITY_XATTR
        if capability and self._table.get(inode).no_capability_xattr:
            raise FUSEError(errno.ENODATA)
        target, follow = self._xattr_target(inode)
        try:
            return os.getxattr(target, name, follow_symlinks=follow)
        except OSError as exc:
            if capability and exc.errno == errno.ENODATA:
                self._table.get(inode).no_capability_xattr = True
            raise

    @_boundary
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        target, follow = self._xattr_target(inode)
        names = os.listxattr(target, follow_symlinks=follow)
        return [os.fsencode(n) for n in names]

    @_boundary
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        target, follow = self._xattr_target(inode)
        journal_path = self._name_for_journal(inode)
        self._intend(ChangeKind.METADATA, journal_path, self._links_of(inode))
        os.removexattr(target, name, follow_symlinks=follow)
        st = self._stat_node(inode)
        path = self._mutation_path(inode, st.st_nlink)
        if path is not None:
            await self._sink.submit(RemoveXattr(path, name, (_stamp(path, st),))).wait()

    @_boundary
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only reached without default_permissions (we always mount with it); kept exact anyway.
        st = self._stat_node(inode)
        if ctx.uid == 0:
            return not (mode & os.X_OK) or stat.S_ISDIR(st.st_mode) or bool(st.st_mode & 0o111)
        if st.st_uid == ctx.uid:
            granted = (st.st_mode >> 6) & 7
        elif st.st_gid == ctx.gid or st.st_gid in pyfuse3.get_sup_groups(ctx.pid):
            granted = (st.st_mode >> 3) & 7
        else:
            granted = st.st_mode & 7
        return (mode & granted) == mode
