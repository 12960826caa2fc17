"""The resync on real sockets and real directories, in one process (no FUSE), over many random
cases: whatever the two copies held before, and whatever the application changes *during* the
resync, the copies end identical (content, types, modes, owners, xattrs, hard links, times)."""

from __future__ import annotations

import random
import shutil
from functools import partial
from pathlib import Path

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tandem.engine.reintegration import journal as journal_module
from tandem.engine.reintegration import resync as resync_module
from tandem.engine.reintegration.journal import ChangeJournal
from tests.helpers.loopback import application, random_tree, run_pair
from tests.helpers.treediff import diff, snapshot


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    # chunk loops are exercised by small files
    monkeypatch.setattr(resync_module, "COMPARE_CHUNK", 64 << 10)
    monkeypatch.setattr(resync_module, "SEND_CHUNK", 16 << 10)
    monkeypatch.setenv(journal_module.BOOT_ID_VARIABLE, "boot-1")


def _fresh(base: Path, *names: str) -> list[Path]:
    paths = []
    for name in names:
        path = base / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        paths.append(path)
    return paths


def assert_same(a: Path, b: Path) -> None:
    differences = diff(snapshot(str(a), times=True), snapshot(str(b), times=True))
    assert differences == [], differences


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), during=st.integers(0, 40))
def test_a_full_resync_with_the_application_running_leaves_identical_copies(
    tmp_path_factory: pytest.TempPathFactory, seed: int, during: int
) -> None:
    # Hard links are left out here: see the next test, and docs/architecture.md D18
    base = tmp_path_factory.mktemp("full")
    a, b = _fresh(base, "a", "b")
    rng = random.Random(seed)
    random_tree(a, rng, 30, links=False)
    shutil.rmtree(b)
    shutil.copytree(a, b, symlinks=True)  # b was a copy once, then both went their own ways
    random_tree(a, rng, 15, links=False)
    random_tree(b, rng, 15, links=False)
    replicator = trio.run(run_pair, a, b, application(a, rng, during, links=False))
    assert replicator.resync_how.startswith("full comparison")
    assert_same(a, b)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_a_full_resync_links_the_names_of_a_file_as_ours_are(
    tmp_path_factory: pytest.TempPathFactory, seed: int
) -> None:
    base = tmp_path_factory.mktemp("links")
    a, b = _fresh(base, "a", "b")
    rng = random.Random(seed)
    random_tree(a, rng, 30)
    shutil.rmtree(b)
    shutil.copytree(a, b, symlinks=True)  # copytree makes every name a file of its own
    random_tree(a, rng, 15)
    random_tree(b, rng, 15)
    trio.run(run_pair, a, b)
    assert_same(a, b)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), away=st.integers(1, 40), during=st.integers(0, 30))
def test_a_tracked_resync_sends_what_changed_while_the_peer_was_away(
    tmp_path_factory: pytest.TempPathFactory, seed: int, away: int, during: int
) -> None:
    base = tmp_path_factory.mktemp("tracked")
    a, b, ja, jb = _fresh(base, "a", "b", "ja", "jb")
    rng = random.Random(seed)
    random_tree(a, rng, 30)
    trio.run(partial(run_pair, a, b, journal_a=ja, journal_b=jb))  # first sync: full
    assert_same(a, b)
    journal = ChangeJournal(ja)  # the peer is away: this node serves alone
    journal.go_alone("the peer is away")
    random_tree(a, rng, away, journal)
    journal.close()
    # the application leaves multiply-linked files alone during the resync: their link
    # structure is then best-effort (D18, roadmap), their content always exact
    app = application(a, rng, during, links=False, spare_linked=True)
    replicator = trio.run(partial(run_pair, a, b, app, journal_a=ja, journal_b=jb))
    assert replicator.resync_how.startswith("tracked"), replicator.resync_how
    assert_same(a, b)
