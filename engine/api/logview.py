"""Log pages for the API: the last lines of a log, or what follows a byte offset (a console
following a log asks again with the offset it was given). A rotated log (the offset beyond
the file's end) starts again from the top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

MAX_PAGE = 256 << 10  # bytes per answer: a page, not the whole log
MAX_LINES = 10_000


def last_lines(path: Path, lines: int) -> dict[str, Any]:
    with open(path, "rb") as log:
        size = log.seek(0, 2)
        start = max(0, size - MAX_PAGE)
        log.seek(start)
        data = log.read(size - start)
    found = data.decode("utf-8", "replace").splitlines()
    if start > 0 and found:
        found = found[1:]  # the first may be cut
    return {"lines": found[-lines:] if lines else found, "next": size, "rotated": False}


def lines_after(path: Path, offset: int) -> dict[str, Any]:
    with open(path, "rb") as log:
        size = log.seek(0, 2)
        rotated = offset > size
        start = 0 if rotated else offset
        log.seek(start)
        data = log.read(min(MAX_PAGE, size - start))
    complete = data[: data.rfind(b"\n") + 1] if len(data) == MAX_PAGE else data
    if len(data) == MAX_PAGE and not complete:
        complete = data  # one line longer than a page: given in pieces
    return {
        "lines": complete.decode("utf-8", "replace").splitlines(),
        "next": start + len(complete),
        "rotated": rotated,
    }


def size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return -1
