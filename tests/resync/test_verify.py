"""`tandem verify`'s comparison on real sockets and real directories, in one process, over many
random cases: it never reports a difference that the application's in-flight changes explain
(no false alarm while the application runs), and on copies that diverged behind Tandem's back it
is silent exactly when the trees are identical, naming only paths that do differ."""

from __future__ import annotations

import random
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.engine.reintegration import resync as resync_module
from tandem.engine.reintegration import verify as verify_module
from tandem.engine.reintegration.journal import ChangeJournal
from tandem.engine.replication.replicator import Replicator
from tests.helpers.loopback import application, random_tree, run_pair
from tests.helpers.treediff import diff, snapshot


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # several chunks per file, so chunk boundaries are exercised by small files
    monkeypatch.setattr(resync_module, "COMPARE_CHUNK", 64 << 10)
    monkeypatch.setattr(verify_module, "COMPARE_CHUNK", 64 << 10)


def _pair(base: Path, rng: random.Random) -> tuple[Path, Path]:
    a, b = base / "a", base / "b"
    a.mkdir()
    b.mkdir()
    random_tree(a, rng, 40)
    return a, b


def _verifying(
    reports: list[dict[str, Any]],
    *,
    during: Any = None,
    diverge: Any = None,
) -> Any:
    async def act(replicator: Replicator, root_fd: int, journal: ChangeJournal | None) -> None:
        with trio.fail_after(60):
            while not replicator.in_sync:
                await trio.sleep(0.01)
        if diverge is not None:
            diverge()
        async with trio.open_nursery() as nursery:
            if during is not None:
                nursery.start_soon(during, replicator, root_fd, journal)
            reports.append(await replicator.verify())

    return act


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), during=st.integers(0, 60))
def test_no_false_alarm_while_the_application_changes_the_tree(
    tmp_path_factory: pytest.TempPathFactory, seed: int, during: int
) -> None:
    rng = random.Random(seed)
    a, b = _pair(tmp_path_factory.mktemp("busy"), rng)
    reports: list[dict[str, Any]] = []
    app = application(a, rng, during, pause=0.001)
    trio.run(partial(run_pair, a, b, _verifying(reports, during=app)))
    (report,) = reports
    assert report["identical"], report
    assert report["paths_checked"] >= 1


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), changes=st.integers(0, 6))
def test_a_divergence_is_found_exactly_when_there_is_one(
    tmp_path_factory: pytest.TempPathFactory, seed: int, changes: int
) -> None:
    rng = random.Random(seed)
    a, b = _pair(tmp_path_factory.mktemp("diverged"), rng)
    reports: list[dict[str, Any]] = []
    trio.run(
        partial(run_pair, a, b, _verifying(reports, diverge=lambda: random_tree(b, rng, changes)))
    )
    (report,) = reports
    differences = diff(snapshot(str(a), times=True), snapshot(str(b), times=True))
    assert report["identical"] == (differences == []), (report, differences)
    assert not report["not_verified"]
    told = "\n".join(differences)
    for path in report["differences"]:
        assert path in told or path == ".", (path, differences)
    # verify changes nothing: the divergence is still there
    assert diff(snapshot(str(a), times=True), snapshot(str(b), times=True)) == differences
