"""Bringing a stale copy level with the primary's: the resync's own mutations, and applying the
ordinary stream to a copy that may not match yet.

An ordinary `Mutation` assumes both copies were equal before it (a write to a missing file is a
divergence). During a resync they are not: the resync's mutations say what an object must *be*
("this path is a file with this mode", "nothing is at this path"), whatever is there now, and
the ordinary stream, mirrored meanwhile, is applied tolerantly: what cannot apply names the paths
the primary must send whole (`Unsettled`), instead of ending replication.
"""

from __future__ import annotations

import errno
import os
import stat

from tandem.engine.protocol.repairs import (
    RENAME_EXCHANGE,
    Ensure,
    LinkIfPresent,
    Move,
    RemoveTree,
    Repair,
    SetXattrs,
)
from tandem.engine.replica.replay import (
    apply_change,
    apply_stamps,
    hard_link,
    owner_and_mode,
    rename,
)
from tandem.fsdriver.beneath import lstat_beneath, object_at, open_beneath, parent_of
from tandem.fsdriver.mutation import (
    CreateFile,
    MakeDirectory,
    MakeHardLink,
    MakeNode,
    MakeSymlink,
    Mutation,
    RemoveDirectory,
    Rename,
    Stamp,
    Sync,
    Unlink,
)

# a stale copy may refuse an ordinary mutation with these: the object is missing, or another
# kind of object is in the way. Anything else (ENOSPC, EIO, EROFS...) is a real failure.
_DIVERGED = frozenset(
    {
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENOTEMPTY,
        errno.EEXIST,
        errno.ELOOP,
        errno.EPERM,  # as root: user xattrs on a symlink, a hard link to a directory
        errno.EINVAL,  # a directory moved into its own subtree (the copy's tree is stale)
        errno.ENODATA,  # removing an xattr the stale copy never had
    }
)


class Unsettled(Exception):
    """The copy could not do what was asked because it diverges there: the primary must send
    these paths whole (compare them and fix every difference)."""

    def __init__(self, paths: tuple[bytes, ...]) -> None:
        super().__init__(paths)
        self.paths = paths


def _lstat(root_fd: int, path: bytes) -> os.stat_result | None:
    try:
        return lstat_beneath(root_fd, path)
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        return None


def remove_tree(root_fd: int, path: bytes) -> None:
    """Remove whatever is at ``path``, never following a symlink, never leaving the copy."""
    if path == b".":
        raise ValueError("the copy's root is never removed")
    st = _lstat(root_fd, path)
    if st is None:
        return
    with parent_of(root_fd, path) as (parent, name):
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent)
            return
        fd = os.open(
            name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent
        )
        try:
            _empty_directory(fd)
        finally:
            os.close(fd)
        os.rmdir(name, dir_fd=parent)


def _empty_directory(fd: int) -> None:
    for name in os.listdir(fd):
        encoded = os.fsencode(name)
        st = os.stat(encoded, dir_fd=fd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            child = os.open(
                encoded, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            try:
                _empty_directory(child)
            finally:
                os.close(child)
            os.rmdir(encoded, dir_fd=fd)
        else:
            os.unlink(encoded, dir_fd=fd)


def make_parents(root_fd: int, path: bytes) -> bool:
    """Make every directory above ``path`` exist (replacing what is not a directory); True when
    something had to be made (its owner and mode are then a guess the primary must fix)."""
    parts = path.split(b"/")[:-1]
    guessed = False
    for depth in range(1, len(parts) + 1):
        parent = b"/".join(parts[:depth])
        st = _lstat(root_fd, parent)
        if st is not None and stat.S_ISDIR(st.st_mode):
            continue
        if st is not None:
            remove_tree(root_fd, parent)
        with parent_of(root_fd, parent) as (fd, name):
            os.mkdir(name, 0o700, dir_fd=fd)
        guessed = True
    return guessed


def _same_object_kind(st: os.stat_result, wanted: Ensure, root_fd: int) -> bool:
    if stat.S_IFMT(st.st_mode) != stat.S_IFMT(wanted.mode):
        return False
    if stat.S_ISLNK(st.st_mode):
        with parent_of(root_fd, wanted.path) as (fd, name):
            return os.readlink(name, dir_fd=fd) == wanted.target
    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return st.st_rdev == wanted.rdev
    return True


def _ensure(root_fd: int, wanted: Ensure) -> tuple[bytes, ...]:
    """Returns the paths whose state became a guess (parents made up, content replaced)."""
    path = wanted.path
    unsettled: list[bytes] = []
    if path != b"." and make_parents(root_fd, path):
        unsettled.append(path.rpartition(b"/")[0])
    st = _lstat(root_fd, path)
    kind = stat.S_IFMT(wanted.mode)
    replace_file = wanted.fresh and kind == stat.S_IFREG
    if st is not None and (replace_file or not _same_object_kind(st, wanted, root_fd)):
        if path == b".":
            raise Unsettled((path,))  # the root is a directory on both sides, always
        if not wanted.fresh and stat.S_ISREG(st.st_mode) != (kind == stat.S_IFREG):
            unsettled.append(path)  # content the primary assumed is gone
        remove_tree(root_fd, path)
        st = None
    if st is None:
        if not wanted.fresh and kind in (stat.S_IFREG, stat.S_IFDIR):
            unsettled.append(path)
        if kind == stat.S_IFREG:
            os.close(open_beneath(root_fd, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        else:
            with parent_of(root_fd, path) as (fd, name):
                if kind == stat.S_IFDIR:
                    os.mkdir(name, 0o700, dir_fd=fd)
                elif kind == stat.S_IFLNK:
                    os.symlink(wanted.target, name, dir_fd=fd)
                else:
                    os.mknod(name, kind | 0o600, wanted.rdev, dir_fd=fd)
    owner_and_mode(
        root_fd, path, wanted.uid, wanted.gid, None if kind == stat.S_IFLNK else wanted.mode
    )
    return tuple(unsettled)


def _set_xattrs(root_fd: int, path: bytes, wanted: tuple[tuple[bytes, bytes], ...]) -> None:
    with object_at(root_fd, path) as target:
        desired = dict(wanted)
        for name in os.listxattr(target):
            encoded = os.fsencode(name)
            if encoded not in desired:
                os.removexattr(target, encoded)
        for wanted_name, value in desired.items():
            try:
                if os.getxattr(target, wanted_name) == value:
                    continue
            except OSError as exc:
                if exc.errno != errno.ENODATA:
                    raise
            os.setxattr(target, wanted_name, value)


def _move(root_fd: int, move: Move) -> None:
    if _lstat(root_fd, move.old) is None:
        return
    if move.flags & RENAME_EXCHANGE:
        if _lstat(root_fd, move.new) is not None:
            rename(root_fd, move.old, move.new, RENAME_EXCHANGE)
        return
    make_parents(root_fd, move.new)
    if move.new.startswith(move.old + b"/"):
        return  # into itself: the copy's tree is not what the primary's was; compare instead
    try:
        rename(root_fd, move.old, move.new, 0)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.EISDIR, errno.ENOTDIR):
            raise
        remove_tree(root_fd, move.new)
        rename(root_fd, move.old, move.new, 0)


def _link(root_fd: int, link: LinkIfPresent) -> tuple[bytes, ...]:
    existing = _lstat(root_fd, link.existing)
    if existing is None or stat.S_ISDIR(existing.st_mode):
        return (link.existing, link.path)  # not what the primary saw: compare both
    current = _lstat(root_fd, link.path)
    if current is not None:
        if (current.st_dev, current.st_ino) == (existing.st_dev, existing.st_ino):
            return ()
        remove_tree(root_fd, link.path)
    make_parents(root_fd, link.path)
    hard_link(root_fd, link.existing, link.path)
    return ()


def apply_repair(root_fd: int, repair: Repair) -> tuple[bytes, ...]:
    """Apply a resync mutation; returns the paths the primary must now compare whole."""
    unsettled: tuple[bytes, ...] = ()
    try:
        match repair:
            case Ensure():
                unsettled = _ensure(root_fd, repair)
            case RemoveTree(path=path):
                remove_tree(root_fd, path)
            case SetXattrs(path=path, xattrs=xattrs):
                _set_xattrs(root_fd, path, xattrs)
            case Move():
                _move(root_fd, repair)
            case LinkIfPresent():
                unsettled = _link(root_fd, repair)
            case _:
                raise TypeError(f"not a repair: {repair!r}")
    except OSError as exc:
        # the copy moved under the repair (an earlier item of the stream changed it): compare
        if exc.errno not in _DIVERGED:
            raise
        return named_paths(repair)
    _stamps_if_present(root_fd, repair.stamps)
    return unsettled


def _stamps_if_present(root_fd: int, stamps: tuple[Stamp, ...]) -> None:
    for stamp in stamps:
        try:
            apply_stamps(root_fd, (stamp,))
        except (FileNotFoundError, NotADirectoryError):
            pass


def named_paths(item: Mutation | Repair) -> tuple[bytes, ...]:
    """Every path an item names (what to compare when it could not be applied)."""
    match item:
        case Rename(old=old, new=new) | Move(old=old, new=new):
            return (old, new)
        case (
            MakeHardLink(existing=existing, path=path) | LinkIfPresent(existing=existing, path=path)
        ):
            return (existing, path)
        case _:
            return (item.path,)


def apply_tolerantly(root_fd: int, mutation: Mutation) -> tuple[bytes, ...]:
    """Apply an ordinary mutation to a copy that may still diverge; returns the paths it could
    not settle. Raises OSError only for failures a divergence does not explain."""
    try:
        apply_change(root_fd, mutation)
    except OSError as exc:
        if exc.errno not in _DIVERGED:
            raise
        match mutation:
            case Unlink() | RemoveDirectory() if exc.errno in (errno.ENOENT, errno.ENOTEMPTY):
                # gone (or holding stale entries the primary's directory did not have)
                remove_tree(root_fd, mutation.path)
            case Sync():
                pass
            case CreateFile() | MakeDirectory() | MakeNode() | MakeSymlink() if (
                exc.errno == errno.EEXIST
            ):
                # the primary made a new object: what the copy had there is stale
                remove_tree(root_fd, mutation.path)
                try:
                    apply_change(root_fd, mutation)
                except OSError as again:
                    if again.errno not in _DIVERGED:
                        raise
                    return named_paths(mutation)
            case _:
                return named_paths(mutation)
    _stamps_if_present(root_fd, mutation.stamps)
    return ()
