"""The mount served by the native data plane (``native/dataplane.c``).

C threads read the kernel's requests and answer the hot ones at once (reads of open files, the
``security.capability`` probe the kernel sends before each write, flushes). Every other request
arrives here, on the trio loop, as a queued `tdp_request`: it is answered by the same
`Passthrough` methods the Python driver calls, so the two drivers share one implementation of
every cold request and the same order rule (a handler's syscall and its mutation in one atomic
step of the loop). A C thread never takes the GIL; this side never blocks a C thread.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pyfuse3
import trio
from pyfuse3 import FUSEError

from tandem.fsdriver.ops import CAPABILITY_XATTR, Passthrough

log = logging.getLogger(__name__)

_TAKE_AT_ONCE = 64
# on SIGTERM, the requests already taken get this long to be answered (a write waiting for the
# peer waits at most the module timeout for it anyway)
STOP_GRACE = 10.0


class NativeUnavailable(RuntimeError):
    """The native data plane was asked for but is not built here."""


def load() -> ModuleType:
    try:
        from tandem.native import _dataplane  # type: ignore[attr-defined]
    except ImportError as exc:
        raise NativeUnavailable(
            f"the native data plane is not built ({exc}); reinstall with a C compiler and "
            "libfuse3-dev present"
        ) from None
    module: ModuleType = _dataplane
    return module


@dataclass(frozen=True, slots=True)
class Caller:
    """What the handlers read of pyfuse3's RequestContext."""

    uid: int
    gid: int
    pid: int
    umask: int


@dataclass(frozen=True, slots=True)
class SetattrFields:
    """What the handlers read of pyfuse3's SetattrFields (whose fields cannot be set)."""

    update_atime: bool
    update_mtime: bool
    update_ctime: bool
    update_mode: bool
    update_uid: bool
    update_gid: bool
    update_size: bool


class DirectoryListing:
    """A readdirplus answer being filled: what `Passthrough.readdir` adds entries to."""

    def __init__(self, module: ModuleType, request: Any, size: int) -> None:
        self._module = module
        self._request = request
        self._size = size
        self._buffer = module.ffi.new("char[]", max(size, 1))
        self.used = 0
        self._attr = module.ffi.new("struct tdp_attr *")

    def add(self, name: bytes, attr: pyfuse3.EntryAttributes, next_id: int) -> bool:
        _fill(self._attr, attr)
        room = self._size - self.used
        needed = self._module.lib.tdp_dir_add(
            self._request, self._buffer + self.used, room, name, self._attr, next_id
        )
        if needed > room:
            return False
        self.used += needed
        return True

    def send(self) -> None:
        self._module.lib.tdp_reply_buf(self._request, self._buffer, self.used)


def _fill(out: Any, attr: pyfuse3.EntryAttributes) -> None:
    out.ino = attr.st_ino
    out.generation = attr.generation
    out.entry_timeout = attr.entry_timeout
    out.attr_timeout = attr.attr_timeout
    out.mode = attr.st_mode
    out.nlink = attr.st_nlink
    out.uid = attr.st_uid
    out.gid = attr.st_gid
    out.rdev = attr.st_rdev
    out.size = attr.st_size
    out.blksize = attr.st_blksize
    out.blocks = attr.st_blocks
    out.atime_ns = attr.st_atime_ns
    out.mtime_ns = attr.st_mtime_ns
    out.ctime_ns = attr.st_ctime_ns


class NativeSession:
    """One mount served by C threads, with its cold requests answered by ``ops``."""

    def __init__(
        self, ops: Passthrough, mountpoint: str, options: set[str], max_threads: int = 8
    ) -> None:
        self._module = load()
        self._ffi = self._module.ffi
        self._lib = self._module.lib
        self._ops = ops
        error = self._ffi.new("char[]", 512)
        joined = ",".join(sorted(options)).encode()
        session = self._lib.tdp_new(os.fsencode(mountpoint), joined, max_threads, error, 512)
        if session == self._ffi.NULL:
            raise RuntimeError(self._ffi.string(error).decode(errors="replace"))
        self._session = session
        self._attr = self._ffi.new("struct tdp_attr *")
        self._batch = self._ffi.new("struct tdp_request *[]", _TAKE_AT_ONCE)
        self._handlers = self._handler_table()
        self._stopping = False
        self._in_flight = 0
        self._room: trio.Event | None = None

    # -- lifetime ---------------------------------------------------------------------------

    def start(self) -> None:
        result = self._lib.tdp_start(self._session)
        if result < 0:
            raise OSError(-result, f"cannot start the data plane's threads: {os.strerror(-result)}")

    def request_stop(self) -> None:
        """Stop taking requests: `serve` answers what it took, then returns."""
        self._stopping = True
        os.write(self._lib.tdp_wake_fd(self._session), (1).to_bytes(8, sys.byteorder))

    def ended(self) -> bool:
        return bool(self._lib.tdp_ended(self._session))

    def close(self, timeout: float = 5.0) -> bool:
        """After the mount is gone: wait for the C loop, then free the session. False when the
        loop did not end in time (its threads are left to the process's end)."""
        self._lib.tdp_exit(self._session)
        joined = self._lib.tdp_join(self._session, int(timeout * 1000)) == 0
        self._lib.tdp_destroy(self._session)
        return joined

    def set_native_reads(self, on: bool) -> None:
        self._lib.tdp_set_native_reads(self._session, 1 if on else 0)

    def counts(self) -> dict[str, int]:
        out = self._ffi.new("struct tdp_counts *")
        self._lib.tdp_get_counts(self._session, out)
        return {
            "native_reads": out.native_reads,
            "native_flushes": out.native_flushes,
            "native_capability_answers": out.native_capability_answers,
            "native_seeks": out.native_seeks,
            "handed_to_python": out.handed_to_python,
            "answered_by_python": out.answered,
        }

    def handed_by_request(self) -> dict[str, int]:
        """How many requests of each kind went to Python (the request mix of a workload)."""
        out = self._ffi.new("uint64_t[]", self._lib.TDP_OPCODES)
        self._lib.tdp_get_handed(self._session, out)
        names = {
            getattr(self._lib, n): n[4:].lower()
            for n in dir(self._lib)
            if n.startswith("TDP_") and not n.startswith("TDP_SET_") and n != "TDP_OPCODES"
        }
        return {names[i]: out[i] for i in range(1, self._lib.TDP_OPCODES) if out[i]}

    async def serve(self, max_tasks: int = 128) -> None:
        """Answer the queued requests until the C loop ends (the mount went away) or a stop
        is requested (then the requests already taken are answered first, within
        STOP_GRACE)."""
        # Every scheduling round costs several microseconds, so a request takes as few as
        # possible: no limiter (backpressure is taking no more than there is room for, the
        # rest waits in C), no checkpoint between taking and sleeping (the tasks run while
        # this one waits for the next wake-up).
        fd = self._lib.tdp_wake_fd(self._session)
        async with trio.open_nursery() as nursery:
            reader = trio.CancelScope()
            nursery.start_soon(self._read_main, nursery, max_tasks, reader)
            while True:
                room = min(max_tasks - self._in_flight, _TAKE_AT_ONCE)
                if room <= 0:
                    self._room = trio.Event()
                    await self._room.wait()
                    continue
                taken = self._lib.tdp_take(self._session, self._batch, room)
                for index in range(taken):
                    self._in_flight += 1
                    nursery.start_soon(self._answer, self._batch[index])
                if self.ended():
                    nursery.cancel_scope.cancel()  # nobody is left to answer
                    break
                if self._stopping:
                    reader.cancel()  # take nothing more; answer what was taken
                    nursery.cancel_scope.deadline = trio.current_time() + STOP_GRACE
                    break
                if self._lib.tdp_may_sleep(self._session):
                    await trio.lowlevel.wait_readable(fd)
                else:
                    await trio.lowlevel.checkpoint()

    async def _read_main(
        self, nursery: trio.Nursery, max_tasks: int, scope: trio.CancelScope
    ) -> None:
        with scope:
            await self._read_main_until_cancelled(nursery, max_tasks)

    async def _read_main_until_cancelled(self, nursery: trio.Nursery, max_tasks: int) -> None:
        """This thread reads the session's own descriptor too, whenever it is readable: a
        request it wins is dispatched here (a hot one answered in C at once, a cold one
        queued and taken right away), with no worker thread to wake on the way — one
        context switch less than through a worker (measured: a cold request 141 → 120 µs,
        deletes +30 %, SQLite +12 %). The workers still take whatever this thread does not."""
        fd = self._lib.tdp_main_fd(self._session)
        while not self._stopping:
            await trio.lowlevel.wait_readable(fd)
            while (result := self._lib.tdp_receive_main(self._session)) > 0:
                pass
            if result < 0:
                return  # the mount went away; the other loop sees the session end
            if self._stopping:
                return
            room = min(max_tasks - self._in_flight, _TAKE_AT_ONCE)
            if room > 0:
                taken = self._lib.tdp_take(self._session, self._batch, room)
                for index in range(taken):
                    self._in_flight += 1
                    nursery.start_soon(self._answer, self._batch[index])

    # -- answering one request --------------------------------------------------------------

    async def _answer(self, request: Any) -> None:
        try:
            await self._handlers[request.opcode](request)
        except FUSEError as exc:
            self._lib.tdp_reply_err(request, exc.errno)
        except Exception:
            log.exception("unexpected error in request %d; answering EIO", request.opcode)
            self._lib.tdp_reply_err(request, errno.EIO)
        finally:
            self._lib.tdp_free_request(request)
            self._in_flight -= 1
            if self._room is not None:
                self._room.set()
                self._room = None

    def _caller(self, request: Any) -> Any:
        return Caller(request.uid, request.gid, request.pid, request.umask)

    def _name(self, request: Any) -> bytes:
        return bytes(self._ffi.buffer(request.name, request.name_len))

    def _name2(self, request: Any) -> bytes:
        return bytes(self._ffi.buffer(request.name2, request.name2_len))

    def _data(self, request: Any) -> bytes:
        if request.data_len == 0:
            return b""
        return bytes(self._ffi.buffer(request.data, request.data_len))

    def _entry(self, request: Any, attr: pyfuse3.EntryAttributes) -> None:
        _fill(self._attr, attr)
        self._lib.tdp_reply_entry(request, self._attr)

    def _attributes(self, request: Any, attr: pyfuse3.EntryAttributes) -> None:
        _fill(self._attr, attr)
        self._lib.tdp_reply_attr(request, self._attr)

    def _sized(self, request: Any, data: bytes) -> None:
        """getxattr/listxattr: the size alone when asked with 0, ERANGE when it does not fit."""
        if request.size == 0:
            self._lib.tdp_reply_xattr_size(request, len(data))
        elif len(data) <= request.size:
            self._lib.tdp_reply_buf(request, data, len(data))
        else:
            self._lib.tdp_reply_err(request, errno.ERANGE)

    def _handler_table(self) -> dict[int, Any]:
        lib = self._lib
        return {
            lib.TDP_LOOKUP: self._lookup,
            lib.TDP_FORGET: self._forget,
            lib.TDP_GETATTR: self._getattr,
            lib.TDP_SETATTR: self._setattr,
            lib.TDP_READLINK: self._readlink,
            lib.TDP_MKNOD: self._mknod,
            lib.TDP_MKDIR: self._mkdir,
            lib.TDP_UNLINK: self._unlink,
            lib.TDP_RMDIR: self._rmdir,
            lib.TDP_SYMLINK: self._symlink,
            lib.TDP_RENAME: self._rename,
            lib.TDP_LINK: self._link,
            lib.TDP_OPEN: self._open,
            lib.TDP_READ: self._read,
            lib.TDP_WRITE: self._write,
            lib.TDP_RELEASE: self._release,
            lib.TDP_FSYNC: self._fsync,
            lib.TDP_OPENDIR: self._opendir,
            lib.TDP_READDIRPLUS: self._readdirplus,
            lib.TDP_RELEASEDIR: self._releasedir,
            lib.TDP_FSYNCDIR: self._fsyncdir,
            lib.TDP_STATFS: self._statfs,
            lib.TDP_SETXATTR: self._setxattr,
            lib.TDP_GETXATTR: self._getxattr,
            lib.TDP_LISTXATTR: self._listxattr,
            lib.TDP_REMOVEXATTR: self._removexattr,
            lib.TDP_ACCESS: self._access,
            lib.TDP_CREATE: self._create,
            lib.TDP_FALLOCATE: self._fallocate,
            lib.TDP_COPY_FILE_RANGE: self._copy_file_range,
        }

    async def _lookup(self, r: Any) -> None:
        self._entry(r, await self._ops.lookup(r.ino, self._name(r), self._caller(r)))

    async def _forget(self, r: Any) -> None:
        pairs = [(r.forgets[2 * i], r.forgets[2 * i + 1]) for i in range(r.forget_count)]
        await self._ops.forget(pairs)
        for ino, _count in pairs:
            if not self._ops.knows(ino):
                # a number the kernel forgot may come back as another file
                self._lib.tdp_capability_absent(self._session, ino, 0)
        self._lib.tdp_reply_none(r)

    async def _getattr(self, r: Any) -> None:
        self._attributes(r, await self._ops.getattr(r.ino, self._caller(r)))

    async def _setattr(self, r: Any) -> None:
        lib = self._lib
        bits = r.flags
        attr = pyfuse3.EntryAttributes()
        attr.st_mode = r.attr_mode
        attr.st_uid = r.attr_uid
        attr.st_gid = r.attr_gid
        attr.st_size = r.attr_size
        attr.st_atime_ns = r.atime_ns
        attr.st_mtime_ns = r.mtime_ns
        fields = SetattrFields(
            update_atime=bool(bits & (lib.TDP_SET_ATIME | lib.TDP_SET_ATIME_NOW)),
            update_mtime=bool(bits & (lib.TDP_SET_MTIME | lib.TDP_SET_MTIME_NOW)),
            update_ctime=bool(bits & lib.TDP_SET_CTIME),
            update_mode=bool(bits & lib.TDP_SET_MODE),
            update_uid=bool(bits & lib.TDP_SET_UID),
            update_gid=bool(bits & lib.TDP_SET_GID),
            update_size=bool(bits & lib.TDP_SET_SIZE),
        )
        fh = r.fh if r.has_fh else None
        entry = await self._ops.setattr(r.ino, attr, fields, fh, self._caller(r))  # type: ignore[arg-type]
        self._attributes(r, entry)

    async def _readlink(self, r: Any) -> None:
        target = await self._ops.readlink(r.ino, self._caller(r))
        self._lib.tdp_reply_buf(r, target, len(target))

    async def _mknod(self, r: Any) -> None:
        entry = await self._ops.mknod(r.ino, self._name(r), r.mode, r.rdev, self._caller(r))
        self._entry(r, entry)

    async def _mkdir(self, r: Any) -> None:
        # as pyfuse3 hands it over: the type bits say directory
        mode = (r.mode & 0o7777) | 0o040000
        self._entry(r, await self._ops.mkdir(r.ino, self._name(r), mode, self._caller(r)))

    async def _unlink(self, r: Any) -> None:
        await self._ops.unlink(r.ino, self._name(r), self._caller(r))
        self._lib.tdp_reply_err(r, 0)

    async def _rmdir(self, r: Any) -> None:
        await self._ops.rmdir(r.ino, self._name(r), self._caller(r))
        self._lib.tdp_reply_err(r, 0)

    async def _symlink(self, r: Any) -> None:
        entry = await self._ops.symlink(r.ino, self._name(r), self._name2(r), self._caller(r))
        self._entry(r, entry)

    async def _rename(self, r: Any) -> None:
        await self._ops.rename(
            r.ino, self._name(r), r.ino2, self._name2(r), r.flags, self._caller(r)
        )
        self._lib.tdp_reply_err(r, 0)

    async def _link(self, r: Any) -> None:
        self._entry(r, await self._ops.link(r.ino, r.ino2, self._name(r), self._caller(r)))

    async def _open(self, r: Any) -> None:
        info = await self._ops.open(r.ino, r.flags, self._caller(r))
        self._lib.tdp_reply_open(r, info.fh, int(info.keep_cache), int(info.direct_io))

    async def _read(self, r: Any) -> None:
        data = await self._ops.read(r.fh, r.offset, r.size)
        self._lib.tdp_reply_buf(r, data, len(data))

    async def _write(self, r: Any) -> None:
        written = await self._ops.write(r.fh, r.offset, self._data(r))
        self._lib.tdp_reply_write(r, written)

    async def _release(self, r: Any) -> None:
        await self._ops.release(r.fh)
        self._lib.tdp_reply_err(r, 0)

    async def _fsync(self, r: Any) -> None:
        await self._ops.fsync(r.fh, bool(r.flags))
        self._lib.tdp_reply_err(r, 0)

    async def _opendir(self, r: Any) -> None:
        handle = await self._ops.opendir(r.ino, self._caller(r))
        self._lib.tdp_reply_open(r, handle, 0, 0)

    async def _readdirplus(self, r: Any) -> None:
        listing = DirectoryListing(self._module, r, r.size)
        await self._ops.readdir(r.fh, r.offset, listing)  # type: ignore[arg-type]
        listing.send()

    async def _releasedir(self, r: Any) -> None:
        await self._ops.releasedir(r.fh)
        self._lib.tdp_reply_err(r, 0)

    async def _fsyncdir(self, r: Any) -> None:
        await self._ops.fsyncdir(r.fh, bool(r.flags))
        self._lib.tdp_reply_err(r, 0)

    async def _statfs(self, r: Any) -> None:
        data = await self._ops.statfs(self._caller(r))
        out = self._ffi.new("struct tdp_statfs *")
        out.bsize, out.frsize = data.f_bsize, data.f_frsize
        out.blocks, out.bfree, out.bavail = data.f_blocks, data.f_bfree, data.f_bavail
        out.files, out.ffree, out.favail = data.f_files, data.f_ffree, data.f_favail
        out.namemax = data.f_namemax
        self._lib.tdp_reply_statfs(r, out)

    async def _setxattr(self, r: Any) -> None:
        # before the change: from now on the C side asks us again
        self._lib.tdp_capability_absent(self._session, r.ino, 0)
        name, caller = self._name(r), self._caller(r)
        # XATTR_CREATE/REPLACE checked first, as pyfuse3 does for the reference driver
        if r.flags & ~(os.XATTR_CREATE | os.XATTR_REPLACE):
            raise FUSEError(errno.EINVAL)
        if r.flags & os.XATTR_CREATE:
            try:
                await self._ops.getxattr(r.ino, name, caller)
            except FUSEError as exc:
                if exc.errno != errno.ENODATA:
                    raise
            else:
                raise FUSEError(errno.EEXIST)
        elif r.flags & os.XATTR_REPLACE:
            await self._ops.getxattr(r.ino, name, caller)
        await self._ops.setxattr(r.ino, name, self._data(r), caller)
        self._lib.tdp_reply_err(r, 0)

    async def _getxattr(self, r: Any) -> None:
        name = self._name(r)
        try:
            value = await self._ops.getxattr(r.ino, name, self._caller(r))
        except FUSEError as exc:
            if name == CAPABILITY_XATTR and exc.errno == errno.ENODATA:
                self._lib.tdp_capability_absent(self._session, r.ino, 1)
            raise
        self._sized(r, value)

    async def _listxattr(self, r: Any) -> None:
        names = await self._ops.listxattr(r.ino, self._caller(r))
        joined = b"\0".join(names) + b"\0" if names else b""
        self._sized(r, joined)

    async def _removexattr(self, r: Any) -> None:
        await self._ops.removexattr(r.ino, self._name(r), self._caller(r))
        self._lib.tdp_reply_err(r, 0)

    async def _access(self, r: Any) -> None:
        granted = await self._ops.access(r.ino, r.flags, self._caller(r))
        self._lib.tdp_reply_err(r, 0 if granted else errno.EACCES)

    async def _fallocate(self, r: Any) -> None:
        await self._ops.fallocate(r.fh, r.flags, r.offset, r.size)
        self._lib.tdp_reply_err(r, 0)

    async def _copy_file_range(self, r: Any) -> None:
        copied = await self._ops.copy_file_range(r.fh, r.offset, r.fh2, r.offset2, r.size, r.flags)
        self._lib.tdp_reply_write(r, copied)

    async def _create(self, r: Any) -> None:
        info, entry = await self._ops.create(r.ino, self._name(r), r.mode, r.flags, self._caller(r))
        _fill(self._attr, entry)
        self._lib.tdp_reply_create(
            r, self._attr, info.fh, int(info.keep_cache), int(info.direct_io)
        )
