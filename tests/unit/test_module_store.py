"""A module's remembered state: survives restarts, and a crash (no clean stop) makes the next
run not sure of its copy; a damaged file is named, never guessed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tandem.engine.failover.module_state import Module, Start, State
from tandem.engine.failover.store import ModuleStore, StoreError


def test_a_clean_stop_keeps_sure_a_crash_does_not(tmp_path: Path) -> None:
    store = ModuleStore(tmp_path)
    assert store.start_event() == Start(0, False, False)  # never ran: nothing to trust
    serving = Module(state=State.ALONE, epoch=4, served=True, sure=True)
    store.save(serving)
    store.stopped(serving)
    assert ModuleStore(tmp_path).start_event() == Start(4, True, True)
    # this run crashes: it never says stopped
    store.save(Module(state=State.ALONE, epoch=5, served=True, sure=True))
    assert ModuleStore(tmp_path).start_event() == Start(5, True, False)
    assert (tmp_path / "module.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "unreadable"),
        ('{"version": 1, "epoch": 2}', "unreadable"),
        ('{"version": 9, "epoch": 2, "served": true, "sure": true, "clean": true}', "version 9"),
        ('{"version": 1, "epoch": -3, "served": true, "sure": true, "clean": true}', "negative"),
        ("[]", "unreadable"),
    ],
)
def test_a_damaged_file_is_named(tmp_path: Path, content: str, problem: str) -> None:
    (tmp_path / "module.json").write_text(content)
    with pytest.raises(StoreError, match=problem) as caught:
        ModuleStore(tmp_path).start_event()
    assert str(tmp_path / "module.json") in str(caught.value)
