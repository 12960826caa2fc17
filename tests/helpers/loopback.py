"""A primary's replicator and a secondary's receiver in one trio loop over loopback TCP, on two
plain directories: the real resync, protocol and apply code, without FUSE, so property tests can
run many cases. An "application" changes the primary's directory the way the filesystem does:
the change and its submission in one step, with the stamps the filesystem would attach."""

from __future__ import annotations

import dataclasses
import os
import random
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from tandem.engine.config.stream import PeerAddress, StreamSettings
from tandem.engine.reintegration.journal import ChangeJournal, SecondaryJournal
from tandem.engine.replica.replay import apply_change
from tandem.engine.replication.receiver import Receiver
from tandem.engine.replication.replicator import Replicator
from tandem.fsdriver.change import Change, ChangeKind
from tandem.fsdriver.mutation import (
    CreateFile,
    MakeDirectory,
    MakeHardLink,
    MakeSymlink,
    Mutation,
    RemoveDirectory,
    Rename,
    SetAttributes,
    SetXattr,
    Stamp,
    Unlink,
    Write,
)

SECRET = b"loopback-secret-0123456789"
NAMES = [b"a", b"b", b"c", b"d"]


def _stamps(root_fd: int, *paths: bytes) -> tuple[Stamp, ...]:
    found = []
    for path in paths:
        try:
            st = os.stat(path, dir_fd=root_fd, follow_symlinks=False)
        except OSError:
            continue
        found.append(Stamp(path, st.st_atime_ns, st.st_mtime_ns))
    return tuple(found)


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0] or b"."


def _objects(root: Path) -> tuple[list[bytes], list[bytes]]:
    files, directories = [], [b"."]
    for directory, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(directory, root)
        prefix = b"" if rel == "." else os.fsencode(rel) + b"/"
        directories += [prefix + os.fsencode(d) for d in dirnames]
        files += [prefix + os.fsencode(f) for f in filenames]
    return files, directories


def random_mutation(
    root: Path, root_fd: int, rng: random.Random, *, links: bool = True
) -> Mutation:
    """A plausible change of the tree at ``root`` (it may fail to apply; callers skip those);
    ``links``: hard links among them."""
    files, directories = _objects(root)
    where = rng.choice(directories)
    name = rng.choice(NAMES) + rng.choice([b"", b"1"])
    new = name if where == b"." else where + b"/" + name
    regular = [
        f for f in files if stat.S_ISREG(os.stat(f, dir_fd=root_fd, follow_symlinks=False).st_mode)
    ]
    kind = rng.randrange(10)
    if kind <= 3 and regular:
        path = rng.choice(regular)
        size = rng.choice([1, 100, 4096, 5000, 70000])
        offset = rng.choice([0, 4096, 8192, rng.randrange(200_000)])
        return Write(path, offset, rng.randbytes(size))
    if kind == 4 and regular:
        return SetAttributes(rng.choice(regular), size=rng.choice([0, 10, 5000, 100_000]))
    if kind == 5:
        return CreateFile(new, 0o640, 0, 0)
    if kind == 6:
        return MakeDirectory(new, 0o750, 0, 0)
    if kind == 7 and files:
        return rng.choice([Unlink(rng.choice(files)), RemoveDirectory(rng.choice(directories))])
    if kind == 8 and (files or len(directories) > 1):
        old = rng.choice(files + directories[1:])
        return Rename(old, new, 0)
    if kind == 9 and regular:
        return rng.choice(
            [
                SetXattr(rng.choice(regular), b"user.k", rng.randbytes(8)),
                MakeHardLink(rng.choice(regular), new)
                if links
                else MakeSymlink(new, b"link-" + name, 0, 0),
                MakeSymlink(new, b"target-" + name, 0, 0),
                SetAttributes(rng.choice(regular), mode=rng.choice([0o600, 0o644])),
            ]
        )
    return CreateFile(new, 0o600, 0, 0)


def _touches_linked_file(root_fd: int, mutation: Mutation) -> bool:
    for name in ("path", "old", "new", "existing"):
        path = getattr(mutation, name, None)
        if path is None:
            continue
        try:
            st = os.stat(path, dir_fd=root_fd, follow_symlinks=False)
        except OSError:
            continue
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            return True
        if stat.S_ISDIR(st.st_mode) and name in ("path", "old"):
            for entry_root, _, files in os.walk(b"/proc/self/fd/%d/%s" % (root_fd, path)):
                for file in files:
                    file_st = os.stat(os.path.join(entry_root, file), follow_symlinks=False)
                    if file_st.st_nlink > 1 and stat.S_ISREG(file_st.st_mode):
                        return True
    return False


def journal_changes(root_fd: int, mutation: Mutation) -> list[Change]:
    """What the filesystem would tell the journal before making this change."""
    shared: list[Change] = []
    if isinstance(mutation, Write | SetAttributes | SetXattr):
        try:
            st = os.stat(mutation.path, dir_fd=root_fd, follow_symlinks=False)
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                shared = [Change(ChangeKind.SHARED, mutation.path)]
        except OSError:
            pass
    return shared + _journal_changes(mutation)


def _journal_changes(mutation: Mutation) -> list[Change]:
    match mutation:
        case Write(path=path, offset=offset, data=data):
            return [Change(ChangeKind.WRITE, path, offset=offset, length=len(data))]
        case SetAttributes(path=path, size=size):
            resize = [] if size is None else [Change(ChangeKind.RESIZE, path, offset=size)]
            return [*resize, Change(ChangeKind.METADATA, path)]
        case Unlink(path=path) | RemoveDirectory(path=path):
            return [Change(ChangeKind.REMOVE, path)]
        case Rename(old=old, new=new):
            return [Change(ChangeKind.RENAME, old, new)]
        case MakeHardLink(existing=existing, path=path):
            return [Change(ChangeKind.LINK, existing, path)]
        case SetXattr(path=path):
            return [Change(ChangeKind.METADATA, path)]
        case _:
            return [Change(ChangeKind.CREATE, mutation.path)]


def change(
    root: Path,
    root_fd: int,
    rng: random.Random,
    journal: ChangeJournal | None = None,
    *,
    links: bool = True,
    spare_linked: bool = False,
) -> Mutation | None:
    """Apply a random change locally (told to ``journal`` first, as the filesystem does);
    returns it with its stamps, or None if it failed (or, with ``spare_linked``, would change
    a file with several names)."""
    mutation = random_mutation(root, root_fd, rng, links=links)
    if spare_linked and _touches_linked_file(root_fd, mutation):
        return None
    announced = journal_changes(root_fd, mutation) if journal is not None else []
    for announced_change in announced:
        assert journal is not None
        journal.intend(announced_change)
    try:
        apply_change(root_fd, mutation)
    except OSError:
        return None
    for announced_change in announced:
        assert journal is not None
        journal.done(announced_change)
    paths: list[bytes] = []
    match mutation:
        case Rename(old=old, new=new):
            paths = [_parent(old), _parent(new), new]
        case MakeHardLink(path=path):
            paths = [_parent(path), path]
        case _:
            paths = [mutation.path, _parent(mutation.path)]
    return dataclasses.replace(mutation, stamps=_stamps(root_fd, *dict.fromkeys(paths)))


def random_tree(
    root: Path,
    rng: random.Random,
    changes: int,
    journal: ChangeJournal | None = None,
    *,
    links: bool = True,
) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(changes):
            change(root, fd, rng, journal, links=links)
    finally:
        os.close(fd)


App = Callable[[Replicator, int, ChangeJournal | None], Awaitable[None]]


async def run_pair(
    a: Path,
    b: Path,
    app: App | None = None,
    *,
    journal_a: Path | None = None,
    journal_b: Path | None = None,
    connect_after: float = 0.0,
) -> Replicator:
    """Replicate ``a`` to ``b`` until the copies are in sync and ``app`` has finished, with every
    mutation acknowledged."""
    a_fd = os.open(a, os.O_RDONLY | os.O_DIRECTORY)
    b_fd = os.open(b, os.O_RDONLY | os.O_DIRECTORY)
    journal = ChangeJournal(journal_a) if journal_a else None
    try:
        receiver = Receiver(
            b_fd,
            StreamSettings("b", "m", str(b)),
            SECRET,
            journal=SecondaryJournal(journal_b) if journal_b else None,
        )
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(receiver.serve, "127.0.0.1", 0)
            port = listeners[0].socket.getsockname()[1]
            settings = StreamSettings(
                "a", "m", str(a), peer=PeerAddress("127.0.0.1", port), peer_timeout=20, retry=0.05
            )
            replicator = Replicator(settings, SECRET, root_fd=a_fd, journal=journal)
            if connect_after:
                await trio.sleep(connect_after)
            nursery.start_soon(replicator.run)
            if app is not None:
                await app(replicator, a_fd, journal)
            with trio.fail_after(60):
                while not replicator.in_sync or replicator.acknowledged < replicator._next_seq - 1:
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        return replicator
    finally:
        if journal is not None:
            journal.close()
        os.close(a_fd)
        os.close(b_fd)


def application(
    root: Path,
    rng: random.Random,
    changes: int,
    pause: float = 0.002,
    *,
    links: bool = True,
    spare_linked: bool = False,
) -> App:
    """``spare_linked``: leave files with several names alone (D18: the link *structure* of a
    file renamed or written while a resync compares it is best-effort; its content is exact)."""

    async def act(replicator: Replicator, root_fd: int, journal: ChangeJournal | None) -> None:
        for _ in range(changes):
            await trio.sleep(rng.random() * pause)
            mutation = change(root, root_fd, rng, journal, links=links, spare_linked=spare_linked)
            if mutation is not None:
                await replicator.submit(mutation).wait()

    return act
