"""Console sessions and the delays that make password guessing slow. Pure logic: the clock
is passed in, so the tests walk time instead of sleeping.

A session is a random id in a cookie (HttpOnly, SameSite=Strict, Secure over HTTPS) plus a
CSRF token the page sends back in a header with every command: a cross-site form can make the
browser send the cookie, never read the token. Sessions end after 30 idle minutes or 12 hours.

After 3 wrong passwords for a name or from an address, each further attempt must wait twice as
long as the one before (2 s, 4 s, … up to 5 minutes) — the answer is 429 with Retry-After, and
the password is not even checked, so a guesser gets no signal and costs the node nothing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from tandem.engine.api.users import Identity

IDLE_LIMIT = 30 * 60.0
ABSOLUTE_LIMIT = 12 * 3600.0
FREE_FAILURES = 3
MAX_DELAY = 300.0
MAX_SESSIONS = 1000  # beyond, the oldest ends: a flood of logins cannot take the memory


@dataclass
class Session:
    identity: Identity
    csrf: str
    created: float
    last_seen: float


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0


class Sessions:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def open(self, identity: Identity, now: float) -> tuple[str, Session]:
        while len(self._sessions) >= MAX_SESSIONS:
            del self._sessions[next(iter(self._sessions))]
        ident = secrets.token_urlsafe(32)
        session = Session(identity, secrets.token_urlsafe(24), now, now)
        self._sessions[ident] = session
        return ident, session

    def find(self, ident: str | None, now: float) -> Session | None:
        session = self._sessions.get(ident) if ident else None
        if session is None:
            return None
        if now - session.last_seen > IDLE_LIMIT or now - session.created > ABSOLUTE_LIMIT:
            del self._sessions[ident]  # type: ignore[arg-type]
            return None
        session.last_seen = now
        return session

    def close(self, ident: str | None) -> None:
        if ident:
            self._sessions.pop(ident, None)

    def close_user(self, name: str) -> None:
        for ident in [i for i, s in self._sessions.items() if s.identity.name == name]:
            del self._sessions[ident]


@dataclass
class Throttle:
    """Wrong-password counts per user name and per client address."""

    _by_key: dict[str, _Failures] = field(default_factory=dict)

    def wait_needed(self, keys: list[str], now: float) -> float:
        """Seconds before another attempt is heard for these keys (0: now)."""
        longest = 0.0
        for key in keys:
            failures = self._by_key.get(key)
            if failures is None or failures.count < FREE_FAILURES:
                continue
            delay = min(MAX_DELAY, 2.0 ** (failures.count - FREE_FAILURES + 1))
            longest = max(longest, failures.last + delay - now)
        return max(0.0, longest)

    def failed(self, keys: list[str], now: float) -> None:
        if len(self._by_key) > 10_000:  # bounded: forget the quietest
            for key in sorted(self._by_key, key=lambda k: self._by_key[k].last)[:5000]:
                del self._by_key[key]
        for key in keys:
            failures = self._by_key.setdefault(key, _Failures())
            failures.count += 1
            failures.last = now

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._by_key.pop(key, None)
