"""From a journal's history to the resync's work: which paths to settle, and how.

The history names paths as they were when each change happened; the resync reads paths as they
are now. Renames in between are followed forward, so a range written to ``a`` before ``a`` became
``b`` is sent as part of ``b``. A move the journal saw complete is also replayed on the peer
(`Move`), so renamed data is moved there rather than sent again; because the peer may already
have applied it, or applied it to something else, everything a move touched is compared, never
assumed. A move that may or may not have happened (no DONE record) is not replayed: both of its
names are compared.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from tandem.engine.protocol.repairs import RENAME_EXCHANGE, LinkIfPresent, Move
from tandem.engine.reintegration.journal import History
from tandem.fsdriver.change import UNBOUNDED, Change, ChangeKind


class Need(enum.IntFlag):
    RANGES = 1  # send the recorded byte ranges as they are now (tracked: no comparison)
    SIZE = 2  # set the size as it is now
    META = 4  # mode, owner, times, extended attributes
    ENTRY = 8  # what this path is (or that nothing is there); a file is compared by hashes
    TREE = 16  # compare the whole subtree by names, types and hashes (tracking says nothing)


@dataclass
class Work:
    need: Need = field(default_factory=lambda: Need(0))
    ranges: list[tuple[int, int]] = field(default_factory=list)

    def merge(self, other: Work) -> None:
        self.need |= other.need
        self.ranges.extend(other.ranges)


@dataclass
class Plan:
    moves: list[Move | LinkIfPresent] = field(default_factory=list)
    work: dict[bytes, Work] = field(default_factory=dict)

    def need(self, path: bytes, need: Need, ranges: tuple[tuple[int, int], ...] = ()) -> None:
        work = self.work.setdefault(path, Work())
        work.need |= need
        work.ranges.extend(ranges)

    def paths(self) -> list[bytes]:
        """Every path this plan touches (a peer reporting its own changes sends these)."""
        found = set(self.work)
        for move in self.moves:
            if isinstance(move, Move):
                found.update((move.old, move.new))
            else:
                found.update((move.existing, move.path))
        return sorted(found)


def full_plan() -> Plan:
    plan = Plan()
    plan.need(b".", Need.TREE)
    return plan


def _under(path: bytes, top: bytes) -> bool:
    return top == b"." or path == top or path.startswith(top + b"/")


def _rebase(path: bytes, old: bytes, new: bytes) -> bytes:
    return new if path == old else new + path[len(old) :]


def _move_keys(plan: Plan, old: bytes, new: bytes) -> None:
    moving = {key: plan.work.pop(key) for key in [k for k in plan.work if _under(k, old)]}
    for key in [k for k in plan.work if _under(k, new)]:
        del plan.work[key]  # replaced by what moved there (and compared whole below)
    for key, work in moving.items():
        plan.work.setdefault(_rebase(key, old, new), Work()).merge(work)


def _swap_keys(plan: Plan, a: bytes, b: bytes) -> None:
    under_a = {k: plan.work.pop(k) for k in [k for k in plan.work if _under(k, a)]}
    under_b = {k: plan.work.pop(k) for k in [k for k in plan.work if _under(k, b)]}
    for key, work in under_a.items():
        plan.work[_rebase(key, a, b)] = work
    for key, work in under_b.items():
        plan.work[_rebase(key, b, a)] = work


def plan_from_history(history: History) -> Plan:
    """What differs between this copy and a peer that shares `history.generation` with it."""
    plan = Plan()
    for index, change in enumerate(history.changes):
        _follow(plan, change, committed=index in history.committed)
    for work in plan.work.values():
        work.ranges = _merged(work.ranges)
    return plan


def _follow(plan: Plan, change: Change, *, committed: bool) -> None:
    path, other = change.path, change.other
    match change.kind:
        case ChangeKind.WRITE:
            end = min(UNBOUNDED, change.offset + change.length)
            plan.need(path, Need.RANGES, ((change.offset, end),))
        case ChangeKind.RESIZE:
            plan.need(path, Need.RANGES | Need.SIZE, ((change.offset, UNBOUNDED),))
        case ChangeKind.METADATA:
            plan.need(path, Need.META)
        case ChangeKind.SCATTERED:
            plan.need(path, Need.ENTRY)  # hashes find the changed blocks among the others
        case ChangeKind.CREATE | ChangeKind.REMOVE:
            # what is pending under a removed path stays: the removal may have failed (it is
            # recorded before it is tried), and settling a path that is gone costs one removal
            plan.need(path, Need.ENTRY)
        case ChangeKind.RENAME if committed:
            _move_keys(plan, path, other)
            plan.moves.append(Move(path, other))
            plan.need(path, Need.ENTRY)
            plan.need(other, Need.TREE)
        case ChangeKind.EXCHANGE if committed:
            _swap_keys(plan, path, other)
            plan.moves.append(Move(path, other, RENAME_EXCHANGE))
            plan.need(path, Need.TREE)
            plan.need(other, Need.TREE)
        case ChangeKind.LINK if committed:
            plan.moves.append(LinkIfPresent(path, other))
            plan.need(other, Need.ENTRY)
        case ChangeKind.SHARED:
            # a file with several names changed; the journal knows only one of them
            plan.need(b".", Need.TREE)
        case ChangeKind.RENAME | ChangeKind.EXCHANGE | ChangeKind.LINK:
            # it may or may not have happened: compare both names whole
            plan.need(path, Need.TREE)
            plan.need(other, Need.TREE)


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def compare_paths(plan: Plan, paths: tuple[bytes, ...] | list[bytes]) -> None:
    """The peer changed these itself: compare each whole."""
    for path in paths:
        plan.need(path, Need.TREE)
