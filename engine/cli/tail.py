"""Printing the end of a log file, and following it (`tandem logs`, `tandem lab logs`)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

FOLLOW_POLL = 0.2  # seconds between looks at a followed file


def line_count(text: str) -> int:
    """An argparse type: a number of lines, 0 or more."""
    try:
        count = int(text)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of lines (0 or more)")
    return count


def last_lines(text: str, lines: int) -> str:
    """The last `lines` lines of `text` (all of them for 0), ending with a newline."""
    kept = text.splitlines()[-lines:] if lines > 0 else text.splitlines()
    return "".join(line + "\n" for line in kept)


def show_tail(path: Path, lines: int, follow: bool) -> None:
    """Print the end of `path`; with `follow`, then what is appended to it until interrupted
    (a file replaced by a rotation is read again from its start)."""
    log = open(path, "rb")  # noqa: SIM115 - reopened after a rotation, closed below
    try:
        sys.stdout.write(last_lines(log.read().decode(errors="replace"), lines))
        sys.stdout.flush()
        while follow:
            chunk = log.read()
            if chunk:
                sys.stdout.write(chunk.decode(errors="replace"))
                sys.stdout.flush()
                continue
            time.sleep(FOLLOW_POLL)
            try:
                rotated = path.stat().st_ino != os.fstat(log.fileno()).st_ino
            except FileNotFoundError:
                continue  # between a rotation's rename and the new file
            if rotated:
                log.close()
                log = open(path, "rb")  # noqa: SIM115
    finally:
        log.close()
