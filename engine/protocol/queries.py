"""Questions the resync asks the secondary *inside* the ordered stream: each is answered after
every mutation submitted before it has been applied, so the answer describes the copy at a
known point of the stream (the primary knows what it submitted since). And one note that needs
no answer: how far the resync is, so the returning node can show it too."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from tandem.fsdriver.mutation import Stamp


@dataclass(frozen=True, slots=True)
class ListQuery:
    """The object at ``path`` and, for a directory, its children (`survey.Entry` list)."""

    path: bytes
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class HashQuery:
    """Per-block hashes of ``path`` over [offset, offset + length)."""

    path: bytes
    offset: int
    length: int
    block: int
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class Finish:
    """The resync is over if the secondary asked for nothing beyond the ``unsettled`` requests
    the primary has handled: it then makes its copy durable and records ``generation``."""

    generation: bytes
    unsettled: int
    stamps: tuple[Stamp, ...] = ()


@dataclass(frozen=True, slots=True)
class ProgressNote:
    """The resync's progress (JSON, `resync.Progress.as_dict` plus "how"), for the secondary's
    `tandem state`; changes nothing."""

    body: bytes
    stamps: tuple[Stamp, ...] = ()


Query: TypeAlias = ListQuery | HashQuery | Finish
QUERY_TYPES = (ListQuery, HashQuery, Finish)
