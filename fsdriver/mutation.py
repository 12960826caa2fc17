"""What the filesystem tells replication: one `Mutation` value per change.

A mutation names objects by their path relative to the replicated directory (``b"."`` is the
directory itself), because the only thing two copies share is their tree, never inode numbers.
Each mutation also carries the `Stamp`s (final atime/mtime) of the objects it touched, so a copy
that replays the stream ends with the same timestamps, not with the replay's own clock.

The contract a sink relies on: mutations are submitted in exactly the order they were applied to
the local copy, and replaying them in that order onto a copy that matched before reproduces the
tree byte for byte (tests/mount/test_replay.py proves it).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, fields
from typing import Any, Protocol

ROOT_PATH = b"."


@dataclass(frozen=True, slots=True)
class Stamp:
    path: bytes
    atime_ns: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Write:
    path: bytes
    offset: int
    data: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class SetAttributes:
    """chmod/chown/truncate/utimes; ``None`` means unchanged (times travel in the stamps)."""

    path: bytes
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class CreateFile:
    path: bytes
    mode: int
    uid: int
    gid: int
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class MakeDirectory:
    path: bytes
    mode: int
    uid: int
    gid: int
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class MakeNode:
    """A fifo, socket or device node (``mode`` carries the type bits)."""

    path: bytes
    mode: int
    rdev: int
    uid: int
    gid: int
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class MakeSymlink:
    path: bytes
    target: bytes
    uid: int
    gid: int
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class MakeHardLink:
    existing: bytes
    path: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class Unlink:
    path: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveDirectory:
    path: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class Rename:
    """``flags`` is 0, RENAME_NOREPLACE or RENAME_EXCHANGE, as the application asked."""

    old: bytes
    new: bytes
    flags: int = 0
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class SetXattr:
    path: bytes
    name: bytes
    value: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class RemoveXattr:
    path: bytes
    name: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class Allocate:
    """fallocate(2) on a file: ``mode`` is its FALLOC_FL_* bits (0: allocate and extend;
    KEEP_SIZE, PUNCH_HOLE, ZERO_RANGE, COLLAPSE_RANGE, INSERT_RANGE). Replayed as the same
    call, so the copy gets the same holes, allocation and size."""

    path: bytes
    mode: int
    offset: int
    length: int
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class Sync:
    """fsync/fdatasync/fsyncdir: everything submitted before must be durable on return."""

    path: bytes
    data_only: bool = False
    stamps: tuple[Stamp, ...] = ()


Mutation = (
    Write
    | SetAttributes
    | CreateFile
    | MakeDirectory
    | MakeNode
    | MakeSymlink
    | MakeHardLink
    | Unlink
    | RemoveDirectory
    | Rename
    | SetXattr
    | RemoveXattr
    | Allocate
    | Sync
)

MUTATION_TYPES: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        Write,
        SetAttributes,
        CreateFile,
        MakeDirectory,
        MakeNode,
        MakeSymlink,
        MakeHardLink,
        Unlink,
        RemoveDirectory,
        Rename,
        SetXattr,
        RemoveXattr,
        Allocate,
        Sync,
    )
}


class Receipt(Protocol):
    async def wait(self) -> None:
        """Return once the sink holds the mutation as strongly as its mode promises."""


class ReplicationSink(Protocol):
    """Where the filesystem hands every mutation before it answers the kernel.

    ``submit`` must not await: its call order *is* the replication order, and the filesystem
    calls it in the same atomic step (no ``await`` in between) as the local change.
    ``Receipt.wait`` must not raise for a lost peer: losing the peer is the engine's business
    (it goes on alone and tracks changes); an exception here becomes EIO for the application.
    """

    def submit(self, mutation: Mutation) -> Receipt: ...

    def settle(self) -> Receipt:
        """A receipt for everything submitted so far: what a write to a file opened O_SYNC or
        O_DSYNC waits for besides its own receipt (which a sink may complete once the write is
        merely on its way, D33)."""
        ...


class _Done:
    async def wait(self) -> None:
        return None


DONE: Receipt = _Done()


class NullSink:
    """Replicates nothing: a standalone mount (and the baseline of the benchmarks)."""

    def submit(self, mutation: Mutation) -> Receipt:
        return DONE

    def settle(self) -> Receipt:
        return DONE


class RecordingSink:
    """Keeps every mutation in memory, in submission order (for tests)."""

    def __init__(self) -> None:
        self.mutations: list[Mutation] = []

    def submit(self, mutation: Mutation) -> Receipt:
        self.mutations.append(mutation)
        return DONE

    def settle(self) -> Receipt:
        return DONE


class FileRecordingSink:
    """Appends every mutation as one JSON line, flushed before the application is answered.

    Lets a test (or an operator debugging a workload) see the exact stream a peer would get.
    """

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1, encoding="ascii")  # noqa: SIM115

    def submit(self, mutation: Mutation) -> Receipt:
        self._file.write(encode_json(mutation) + "\n")
        return DONE

    def settle(self) -> Receipt:
        return DONE

    def close(self) -> None:
        self._file.close()


def _to_plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, Stamp):
        return {"stamp": [_to_plain(getattr(value, f.name)) for f in fields(Stamp)]}
    return value


def _from_plain(value: Any) -> Any:
    if isinstance(value, dict) and "b64" in value:
        return base64.b64decode(value["b64"])
    if isinstance(value, dict) and "stamp" in value:
        return Stamp(*(_from_plain(v) for v in value["stamp"]))
    if isinstance(value, list):
        return tuple(_from_plain(v) for v in value)
    return value


def encode_json(mutation: Mutation) -> str:
    body = {f.name: _to_plain(getattr(mutation, f.name)) for f in fields(mutation)}
    return json.dumps({"kind": type(mutation).__name__, **body}, separators=(",", ":"))


def decode_json(line: str) -> Mutation:
    raw = json.loads(line)
    cls = MUTATION_TYPES[raw.pop("kind")]
    result: Mutation = cls(**{k: _from_plain(v) for k, v in raw.items()})
    return result
