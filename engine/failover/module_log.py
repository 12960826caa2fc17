"""The module log: every state change and why, one line each, for the operator (`tandem
logs`). Writing it never stops the module: a full disk is said once in the node's log."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class ModuleLog:
    def __init__(self, path: str) -> None:
        self.path = path

    def note(self, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        try:
            with open(self.path, "a", encoding="utf-8") as out:
                out.write(f"{stamp} {text}\n")
        except OSError as exc:
            log.error("cannot write the module log: %s", exc.strerror)
