"""What a node remembers of a module across restarts: the copy's epoch, whether it served
during it, whether it was sure to be the newest, and whether the last run stopped cleanly
(`module_state` explains the first three). A crash leaves ``clean`` false, so the
next run starts not sure: the peer may have taken over meanwhile.

One small JSON file per module in its state directory, replaced atomically and fsync'd before
the step that changed it has any effect outside (the executor saves first, then acts).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tandem.engine.failover.module_state import Module, Start

FILE_NAME = "module.json"
VERSION = 1


class StoreError(Exception):
    """Worded for the operator: which file, what is wrong."""


@dataclass(frozen=True)
class Remembered:
    epoch: int = 0
    served: bool = False
    sure: bool = False
    clean: bool = True


class ModuleStore:
    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.path = Path(directory) / FILE_NAME

    def load(self) -> Remembered:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            # a node that never ran this module: nothing served, nothing sure
            return Remembered(clean=True)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read: {exc.strerror}") from None
        try:
            raw = json.loads(text)
            if raw.get("version") != VERSION:
                raise StoreError(
                    f"{self.path}: version {raw.get('version')!r}, this Tandem reads {VERSION}"
                )
            remembered = Remembered(
                epoch=int(raw["epoch"]),
                served=bool(raw["served"]),
                sure=bool(raw["sure"]),
                clean=bool(raw["clean"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise StoreError(
                f"{self.path}: unreadable ({text[:60]!r}); if this node's copy may be stale, "
                "delete the file: the module then waits for its peer (or `tandem prim --force`)"
            ) from None
        if remembered.epoch < 0:
            raise StoreError(f"{self.path}: epoch {remembered.epoch} is negative")
        return remembered

    def start_event(self) -> Start:
        """What the state machine is told at start; marks this run unclean until `stopped`."""
        remembered = self.load()
        self._write(Remembered(remembered.epoch, remembered.served, remembered.sure, False))
        return Start(remembered.epoch, remembered.served, remembered.sure and remembered.clean)

    def save(self, module: Module) -> None:
        self._write(Remembered(module.epoch, module.served, module.sure, clean=False))

    def stopped(self, module: Module) -> None:
        """The run ends cleanly (every action done): the next run may trust ``sure``."""
        self._write(Remembered(module.epoch, module.served, module.sure, clean=True))

    def _write(self, remembered: Remembered) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = json.dumps(
            {
                "version": VERSION,
                "epoch": remembered.epoch,
                "served": remembered.served,
                "sure": remembered.sure,
                "clean": remembered.clean,
            }
        )
        temporary = self.path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, body.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
