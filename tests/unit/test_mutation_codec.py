from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tandem.fsdriver.mutation import (
    MUTATION_TYPES,
    Rename,
    SetAttributes,
    Stamp,
    Write,
    decode_json,
    encode_json,
)

paths = st.binary(min_size=1, max_size=40)
stamps = st.tuples(st.builds(Stamp, paths, st.integers(0, 2**63), st.integers(0, 2**63))).map(
    tuple
) | st.just(())

mutations = st.one_of(
    st.builds(Write, paths, st.integers(0, 2**62), st.binary(max_size=200), stamps),
    st.builds(
        SetAttributes,
        paths,
        st.none() | st.integers(0, 0o7777),
        st.none() | st.integers(0, 2**32 - 1),
        st.none() | st.integers(0, 2**32 - 1),
        st.none() | st.integers(0, 2**62),
        stamps,
    ),
    st.builds(Rename, paths, paths, st.sampled_from([0, 1, 2]), stamps),
)


@given(mutations)
def test_json_round_trip(mutation: Write | SetAttributes | Rename) -> None:
    assert decode_json(encode_json(mutation)) == mutation


def test_every_mutation_kind_is_registered() -> None:
    assert set(MUTATION_TYPES) == {
        "Write",
        "SetAttributes",
        "CreateFile",
        "MakeDirectory",
        "MakeNode",
        "MakeSymlink",
        "MakeHardLink",
        "Unlink",
        "RemoveDirectory",
        "Rename",
        "SetXattr",
        "RemoveXattr",
        "Allocate",
        "Sync",
    }
