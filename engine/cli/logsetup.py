"""How the `tandem` processes log: to stderr, with a severity on every line; a time with its
zone when a person or a file reads it, none under journald (which stamps every line itself, so
ours came out twice) but the syslog priority prefix it turns into the entry's priority."""

from __future__ import annotations

import logging
import os
import sys

from tandem.engine.failover.module_log import stamp

# journald's priorities (syslog's) for Python's levels
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3}


def under_journald() -> bool:
    """Whether stderr is the journal's stream (systemd sets JOURNAL_STREAM to its dev:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        status = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return expected == f"{status.st_dev}:{status.st_ino}"


class _Stamped(logging.Formatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return stamp(record.created)


class _Journal(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        return f"<{priority}>{super().format(record)}"


def configure(verbose: bool) -> None:
    handler = logging.StreamHandler()
    if under_journald():
        handler.setFormatter(_Journal("%(name)s %(levelname)s %(message)s"))
    else:
        handler.setFormatter(_Stamped("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
