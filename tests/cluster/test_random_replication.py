"""Random operation sequences (hypothesis; rename-over, hard links, truncate-extend, sparse
writes, xattrs, chmod/chown, as root and as another user) run on the primary of a real lab:
once they return, the two nodes' copies are identical byte for byte and attribute for
attribute, mtimes included."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given

from tests.conftest import NOBODY, run_ops
from tests.helpers.lab import LabCluster
from tests.helpers.treediff import diff, snapshot
from tests.mount.test_random_sequences import example_settings, sequences

pytestmark = pytest.mark.root


class Counter:
    examples = 0


@pytest.fixture(scope="module")
def shared_lab() -> Iterator[LabCluster]:
    base = Path(tempfile.mkdtemp(prefix="tandem-randlab-", dir="/tmp"))
    base.chmod(0o755)
    lab = LabCluster(base / "lab")
    try:
        yield lab.up()
        for node in ("a", "b"):
            assert "Traceback" not in lab.log(node), lab.log(node)
            assert "going on alone" not in lab.log(node), lab.log(node)
    finally:
        lab.down()
        shutil.rmtree(base, ignore_errors=True)


def _check(lab: LabCluster, ops: list[list[Any]], user: tuple[int, int]) -> None:
    Counter.examples += 1
    tag = f"ex{Counter.examples}-{user[0]}"
    made = lab.exec(
        "a", "sh", "-c", f"mkdir {lab.path}/{tag} && chown {user[0]}:{user[1]} {lab.path}/{tag}"
    )
    assert made.returncode == 0, made.stderr
    run_ops(lab.path / tag, ops, user, on=lab.on("a"))
    primary = snapshot(str(lab.copy("a") / tag), times=True)
    secondary = snapshot(str(lab.copy("b") / tag), times=True)
    assert diff(primary, secondary) == [], "the secondary's copy differs from the primary's"


SETTINGS = example_settings("TANDEM_CLUSTER_EXAMPLES", 40)


@SETTINGS
@given(ops=sequences)
def test_random_sequences_leave_identical_copies_as_root(
    shared_lab: LabCluster, ops: list[list[Any]]
) -> None:
    _check(shared_lab, ops, (0, 0))


@SETTINGS
@given(ops=sequences)
def test_random_sequences_leave_identical_copies_as_another_user(
    shared_lab: LabCluster, ops: list[list[Any]]
) -> None:
    _check(shared_lab, ops, NOBODY)
