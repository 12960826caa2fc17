from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tandem.fsdriver.inode import ROOT_INODE, InodeTable, Node

DEV = 7


def table() -> InodeTable:
    return InodeTable((DEV, 2))


def test_backing_inode_numbers_are_reused_when_free() -> None:
    t = table()
    node = t.learn((DEV, 100), ROOT_INODE, b"a")
    assert node.ino == 100
    assert t.path(100) == b"a"


def test_another_device_or_a_taken_number_gets_a_private_number() -> None:
    t = table()
    other = t.learn((DEV + 1, 100), ROOT_INODE, b"mnt")
    assert other.ino != 100 and other.ino >= 1 << 62
    clash = t.learn((DEV, 1), ROOT_INODE, b"one")  # 1 is the FUSE root
    assert clash.ino != ROOT_INODE


def test_paths_follow_directory_renames() -> None:
    t = table()
    d = t.learn((DEV, 10), ROOT_INODE, b"d")
    f = t.learn((DEV, 11), d.ino, b"f")
    t.renamed((ROOT_INODE, b"d"), (ROOT_INODE, b"e"), (DEV, 10), None, False, exchange=False)
    assert t.path(f.ino) == b"e/f"


def test_deleted_object_keeps_its_number_until_forgotten_but_frees_its_key() -> None:
    t = table()
    f = t.learn((DEV, 20), ROOT_INODE, b"f")
    f.lookups = 1
    t.unlinked(ROOT_INODE, b"f", (DEV, 20), object_gone=True)
    assert t.path(f.ino) is None
    # the file system reuses backing inode 20 for a new file: it must not alias the old one
    new = t.learn((DEV, 20), ROOT_INODE, b"g")
    assert new.ino != f.ino
    t.forget(f.ino, 1)
    assert t.find((DEV, 20)) is new


def test_hard_links_keep_a_path_after_one_name_goes() -> None:
    t = table()
    f = t.learn((DEV, 30), ROOT_INODE, b"a")
    t.learn((DEV, 30), ROOT_INODE, b"b")
    t.unlinked(ROOT_INODE, b"a", (DEV, 30), object_gone=False)
    assert t.path(f.ino) == b"b"


def test_exchange_swaps_the_names() -> None:
    t = table()
    a = t.learn((DEV, 40), ROOT_INODE, b"a")
    b = t.learn((DEV, 41), ROOT_INODE, b"b")
    t.renamed((ROOT_INODE, b"a"), (ROOT_INODE, b"b"), (DEV, 40), (DEV, 41), False, exchange=True)
    assert (t.path(a.ino), t.path(b.ino)) == (b"b", b"a")


@given(st.lists(st.tuples(st.integers(3, 30), st.integers(1, 3)), max_size=60))
def test_forget_balances_lookups(events: list[tuple[int, int]]) -> None:
    t = table()
    counts: dict[int, int] = {}
    for number, n in events:
        node = t.learn((DEV, number), ROOT_INODE, b"n%d" % number)
        node.lookups += n
        counts[node.ino] = counts.get(node.ino, 0) + n
    for ino, n in counts.items():
        t.forget(ino, n)
    assert len(t) == 1  # only the root is left


@given(
    st.lists(
        st.tuples(st.booleans(), st.integers(1, 4), st.sampled_from([b"a", b"b", b"c"])),
        max_size=40,
    )
)
def test_a_node_s_links_behave_as_an_insertion_ordered_set(
    steps: list[tuple[bool, int, bytes]],
) -> None:
    """The compact links (the oldest, then a dict only for hard links) against the plain
    insertion-ordered dict they replace: same members, same order, same oldest."""
    node = Node(5, (DEV, 5))
    model: dict[tuple[int, bytes], None] = {}
    for add, parent, name in steps:
        if add:
            node.add_link((parent, name))
            model[(parent, name)] = None
        else:
            node.remove_link((parent, name))
            model.pop((parent, name), None)
        assert node.links == tuple(model)
        assert node.link == next(iter(model), None)
