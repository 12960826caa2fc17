"""The block-hash scanner: known answers, C and Python agreeing on random sparse files, the
environment variable that demands an implementation, and bad arguments."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tandem.native import blockhash
from tandem.native.blockhash import (
    BlockHashUnavailable,
    hash_blocks,
    hash_blocks_c,
    hash_blocks_python,
)

SCANNERS = [hash_blocks_c, hash_blocks_python]
# XXH3_64bits, seed 0: the published value for the empty input, the others pinned from it
EMPTY = 0x2D06800538D394C2
ABC = 0x78AF5F94892F3950
ZEROS_4K = 0x93D76FE148C689BA


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "file"


def _fd(path: Path, content: bytes = b"") -> int:
    path.write_bytes(content)
    return os.open(path, os.O_RDONLY)


@pytest.mark.parametrize("scan", SCANNERS)
def test_known_answers(scan, scratch: Path) -> None:
    fd = _fd(scratch, b"abc" + bytes(4093) + bytes(4096))
    try:
        assert list(scan(fd, 0, 3, 4096)) == [ABC]
        assert list(scan(fd, 4096, 4096, 4096)) == [ZEROS_4K]
        assert list(scan(fd, 0, 0, 4096)) == []
        # past the end a read returns nothing: the block hashes as empty, not as zeros
        assert list(scan(fd, 8192, 4096, 4096)) == [EMPTY]
        assert len(scan(fd, 0, 8192, 4096)) == 2
    finally:
        os.close(fd)


@pytest.mark.parametrize("scan", SCANNERS)
def test_a_hole_hashes_like_the_zeros_it_reads_as(scan, scratch: Path) -> None:
    dense = scratch.with_name("dense")
    dense.write_bytes(b"x" * 4096 + bytes(1 << 20) + b"y" * 100)
    with scratch.open("wb") as sparse:
        sparse.write(b"x" * 4096)
        sparse.seek(4096 + (1 << 20))
        sparse.write(b"y" * 100)
    size = scratch.stat().st_size
    assert os.stat(scratch).st_blocks * 512 < size  # the filesystem really made a hole
    a, b = os.open(scratch, os.O_RDONLY), os.open(dense, os.O_RDONLY)
    try:
        hashes = scan(a, 0, size, 4096)
        assert hashes == scan(b, 0, size, 4096)
        assert hashes[1] == ZEROS_4K and hashes[0] != ZEROS_4K
    finally:
        os.close(a)
        os.close(b)


segments = st.lists(
    st.tuples(st.integers(0, 3 << 20), st.binary(min_size=1, max_size=20000)), max_size=6
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=segments,
    tail=st.integers(0, 1 << 20),
    block_size=st.sampled_from([512, 1000, 4096, 65536, 1 << 20, 5 << 20]),
    first_block=st.integers(0, 40),
    extra=st.integers(-5000, 5000),
)
def test_c_and_python_agree_on_random_sparse_files(
    tmp_path_factory: pytest.TempPathFactory,
    segments: list[tuple[int, bytes]],
    tail: int,
    block_size: int,
    first_block: int,
    extra: int,
) -> None:
    path = tmp_path_factory.mktemp("agree") / "f"
    with path.open("wb") as f:
        for offset, data in segments:
            f.seek(offset)
            f.write(data)
        f.truncate(f.seek(0, os.SEEK_END) + tail)
    size = path.stat().st_size
    offset = min(first_block * block_size, size // block_size * block_size)
    length = max(0, size - offset + extra)
    fd = os.open(path, os.O_RDONLY)
    try:
        c = hash_blocks_c(fd, offset, length, block_size)
        python = hash_blocks_python(fd, offset, length, block_size)
    finally:
        os.close(fd)
    assert c == python
    assert len(c) == -(-length // block_size)


@pytest.mark.parametrize("scan", SCANNERS)
def test_bad_arguments_are_refused(scan, scratch: Path) -> None:
    fd = _fd(scratch, b"data")
    try:
        with pytest.raises(ValueError, match="multiple"):
            scan(fd, 100, 10, 4096)
        with pytest.raises(ValueError, match="positive"):
            scan(fd, 0, 10, 0)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as raised:
        scan(fd, 0, 4096, 4096)  # closed
    assert raised.value.errno == 9


def _implementation_in_child(
    value: str | None, block_c: bool = False
) -> subprocess.CompletedProcess:
    code = (
        "import sys; sys.modules['tandem.native._blockhash'] = None\n" if block_c else ""
    ) + "from tandem.native import blockhash\nprint(blockhash.implementation())\n"
    env = {k: v for k, v in os.environ.items() if k != blockhash.ENVIRONMENT_VARIABLE}
    if value is not None:
        env[blockhash.ENVIRONMENT_VARIABLE] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_the_c_scanner_is_built_and_chosen_by_default() -> None:
    assert _implementation_in_child(None).stdout.strip() == "c"
    assert _implementation_in_child("auto").stdout.strip() == "c"


def test_the_environment_variable_demands_an_implementation() -> None:
    assert _implementation_in_child("python").stdout.strip() == "python"
    assert _implementation_in_child("c").stdout.strip() == "c"
    # without C, auto falls back to Python, but demanding C is an error
    assert _implementation_in_child(None, block_c=True).stdout.strip() == "python"
    demanded = _implementation_in_child("c", block_c=True)
    assert demanded.returncode != 0
    assert "BlockHashUnavailable" in demanded.stderr and "not built" in demanded.stderr
    wrong = _implementation_in_child("fast")
    assert wrong.returncode != 0 and "expected one of c, python, auto" in wrong.stderr


def test_hash_blocks_uses_the_demanded_implementation(
    monkeypatch: pytest.MonkeyPatch, scratch: Path
) -> None:
    fd = _fd(scratch, os.urandom(10000))
    try:
        monkeypatch.setenv(blockhash.ENVIRONMENT_VARIABLE, "python")
        python = hash_blocks(fd, 0, 10000)
        monkeypatch.setenv(blockhash.ENVIRONMENT_VARIABLE, "c")
        assert hash_blocks(fd, 0, 10000) == python
        monkeypatch.setenv(blockhash.ENVIRONMENT_VARIABLE, "nonsense")
        with pytest.raises(BlockHashUnavailable):
            hash_blocks(fd, 0, 10000)
    finally:
        os.close(fd)
