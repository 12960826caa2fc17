"""What a receiver does with connections that have not proved the secret yet, sans-IO.

Anyone who can reach the port can open connections; none of them may cost the pair its stream.
So the handshakes in progress are bounded, in all and per source address. A newcomer from a
source that already holds its share is refused at the door: closed the moment it is accepted,
before it costs a task, a key or a line of log, so the receiver drains its listen queue faster
than one flooder can fill it and a primary's connection from any other address finds room. A
newcomer from a source below its share, when the total is reached, takes the place of the
*oldest* handshake of the source holding the most: a flood from many addresses only replaces
itself. Strangers that stay silent lose their place at the handshake deadline, so a flood that
stops costs a primary sharing its address no more than that. The bound also keeps the
receiver's descriptors for the stream: at most `MAX_PENDING` of them ever go to strangers.

What the strangers did is logged in full for the first few each window, then counted, and one
line a window sums up the rest, so a flood cannot fill the disk with the log.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field

MAX_PENDING = 64  # handshakes in progress, in all
MAX_PENDING_PER_SOURCE = 16
LOGGED_PER_WINDOW = 5  # refusals logged one by one each window; the rest are summed up
WINDOW = 10.0  # seconds


@dataclass
class Admission:
    """Handshakes in progress, oldest first; `admit` refuses a newcomer or names the
    handshakes to end to make room for it."""

    max_pending: int = MAX_PENDING
    per_source: int = MAX_PENDING_PER_SOURCE
    _pending: OrderedDict[int, str] = field(default_factory=OrderedDict)  # ticket -> source
    _by_source: Counter[str] = field(default_factory=Counter)
    _next: int = 0

    def admit(self, source: str) -> tuple[int, list[int]] | None:
        """A ticket for a new handshake from `source` and the tickets it evicts, or None: the
        source holds its share already, the newcomer is refused."""
        if self._by_source[source] >= self.per_source:
            return None
        evicted: list[int] = []
        if len(self._pending) >= self.max_pending:
            busiest = max(self._by_source, key=lambda s: self._by_source[s])
            evicted.append(self._oldest_of(busiest))
        for ticket in evicted:
            self.done(ticket)
        self._next += 1
        self._pending[self._next] = source
        self._by_source[source] += 1
        return self._next, evicted

    def done(self, ticket: int) -> None:
        """The handshake ended (proved, failed, evicted): its place is free."""
        source = self._pending.pop(ticket, None)
        if source is None:
            return
        self._by_source[source] -= 1
        if not self._by_source[source]:
            del self._by_source[source]

    def _oldest_of(self, source: str) -> int:
        return next(ticket for ticket, s in self._pending.items() if s == source)

    def __len__(self) -> int:
        return len(self._pending)


@dataclass
class RefusalLog:
    """Decides which refusals are worth a line of their own, and sums up the others."""

    window: float = WINDOW
    logged_per_window: int = LOGGED_PER_WINDOW
    _started: float | None = None
    _logged: int = 0
    _kinds: Counter[str] = field(default_factory=Counter)
    _sources: Counter[str] = field(default_factory=Counter)

    def record(self, now: float, kind: str, source: str) -> bool:
        """Count a refusal; True if it should be logged on its own line."""
        if self._started is None:
            self._started = now
        if self._logged < self.logged_per_window:
            self._logged += 1
            return True
        self._kinds[kind] += 1
        self._sources[source] += 1
        return False

    def summary(self, now: float) -> str | None:
        """Once a window has passed: the line that sums up what was not logged (None: nothing
        to say yet); a new window starts."""
        if self._started is None or now - self._started < self.window:
            return None
        elapsed, self._started, self._logged = now - self._started, None, 0
        if not self._kinds:
            return None
        total = sum(self._kinds.values())
        kinds = ", ".join(f"{count} {kind}" for kind, count in self._kinds.most_common())
        sources = ", ".join(f"{source} ({count})" for source, count in self._sources.most_common(3))
        more = len(self._sources) - 3
        self._kinds.clear()
        self._sources.clear()
        return (
            f"{total} more connections without the secret refused in the last {elapsed:.0f} s "
            f"({kinds}) from {sources}{f' and {more} other addresses' if more > 0 else ''}"
        )
