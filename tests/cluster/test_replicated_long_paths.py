"""Paths longer than PATH_MAX from the root cross the real stream: the secondary applies them
(walked in pieces beneath its copy, through no symlink) and ends identical."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.helpers.pair import Pair
from tests.mount.test_long_paths import _digest, _run

pytestmark = [pytest.mark.root, pytest.mark.both_drivers]


def test_a_secondary_applies_paths_longer_than_path_max(
    make_pair: Callable[[float], Pair],
) -> None:
    pair = make_pair(3.0)
    pair.start_secondary()
    pair.start_primary()
    answers = _run(pair.a)
    assert all(answer[0] == "ok" for answer in answers), answers
    expected = _digest(pair.a)
    pair.stop()
    assert _digest(pair.b) == expected
    assert "protocol violation" not in pair.secondary.log()  # type: ignore[union-attr]
