"""What a comparison running alongside the application may trust: the change clock says which
blocks of a file may have changed since a point of the stream, through any of its names."""

from __future__ import annotations

from tandem.engine.reintegration.change_clock import ChangeClock
from tandem.fsdriver.mutation import MakeHardLink, Unlink, Write


def test_a_write_through_its_own_name_dirties_only_those_blocks() -> None:
    clock = ChangeClock()
    clock.observe(Write(b"f", 0, b"x"))
    since = clock.clock
    clock.observe(Write(b"f", 8192, b"y" * 10))
    assert clock.changed_blocks(b"f", since, nlink=1) == [(8192, 8202)]
    assert clock.changed_blocks(b"g", since, nlink=1) == []


def test_a_write_through_another_name_counts_even_once_that_name_is_gone() -> None:
    # a race the verify property test can hit: link, write through the new name, unlink it; the
    # file has one name again when it is hashed, but its data changed meanwhile
    clock = ChangeClock()
    clock.observe(Write(b"f", 0, b"x"))
    since = clock.clock
    clock.observe(MakeHardLink(b"f", b"other"))
    clock.observe(Write(b"other", 0, b"changed"))
    clock.observe(Unlink(b"other"))
    assert clock.changed_blocks(b"f", since, nlink=1) is None
    assert clock.attributes_changed(b"f", since, nlink=1)


def test_links_made_before_the_point_do_not_dirty_single_name_files() -> None:
    clock = ChangeClock()
    clock.observe(MakeHardLink(b"f", b"other"))
    since = clock.clock
    clock.observe(Write(b"g", 0, b"x"))
    assert clock.changed_blocks(b"h", since, nlink=1) == []
    assert clock.changed_blocks(b"f", since, nlink=2) is None  # g may be another name of f
