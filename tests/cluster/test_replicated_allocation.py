"""fallocate and copy_file_range on a replicating primary (native driver) reach the secondary
over the real stream (protocol 6): the copy ends with the same size, bytes and holes."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from tandem.fsdriver.driver import ENVIRONMENT_VARIABLE
from tests.helpers.pair import Pair
from tests.mount.test_allocation import BLOCK, _apply_steps, _layout

pytestmark = pytest.mark.root


def test_allocations_and_range_copies_reach_the_secondary_with_their_holes(
    make_pair: Callable[[float], Pair], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "native")
    pair = make_pair(3.0)
    pair.start_secondary()
    primary = pair.start_primary()
    payload = os.urandom(48 * BLOCK)
    _apply_steps(pair.a / "f", payload)
    source, target = pair.a / "source", pair.a / "target"
    source.write_bytes(os.urandom(2 * (1 << 20) + 5))
    target.touch()
    fd_in, fd_out = os.open(source, os.O_RDONLY), os.open(target, os.O_WRONLY)
    try:
        assert os.copy_file_range(fd_in, fd_out, 1 << 20, 3, 0) == 1 << 20
    finally:
        os.close(fd_in)
        os.close(fd_out)
    expected = {
        name: ((pair.a / name).read_bytes(), _layout(pair.a / name))
        for name in ("f", "source", "target")
    }
    assert "(native driver)" in primary.log()
    pair.stop()  # every write above was acknowledged: the copy must hold it all
    for name, (content, layout) in expected.items():
        assert (pair.b / name).read_bytes() == content, name
        assert _layout(pair.b / name) == layout, name
