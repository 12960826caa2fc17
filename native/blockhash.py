"""Per-block XXH3-64 hashes of a file range: the comparison primitive of reintegration.

Two implementations with identical output: the C scanner (``_blockhash``, built by ``pip
install`` with cffi) and a pure-Python reference. ``TANDEM_BLOCKHASH=c`` or ``=python`` demands
one; demanding one that is not available is an error, never a silent fallback (a benchmark or a
test that believes it measures C must not measure Python). Unset or ``auto`` takes C when built.

A block's hash is XXH3_64bits of the bytes ``pread`` returns for it: the last block of a range
may be short, and a hole hashes like the zeros it reads as, so a sparse file and a dense copy of
it compare equal.
"""

from __future__ import annotations

import importlib
import os
from array import array
from types import ModuleType

import xxhash

ENVIRONMENT_VARIABLE = "TANDEM_BLOCKHASH"
IMPLEMENTATIONS = ("c", "python")
DEFAULT_BLOCK_SIZE = 4096
_PYTHON_CHUNK = 1 << 20


class BlockHashUnavailable(RuntimeError):
    """The implementation asked for cannot be used here."""


def _load_c() -> ModuleType | None:
    try:
        return importlib.import_module("tandem.native._blockhash")
    except ImportError:
        return None


def implementation() -> str:
    """The implementation `hash_blocks` uses, after honouring the environment variable."""
    wanted = os.environ.get(ENVIRONMENT_VARIABLE, "auto").strip().lower() or "auto"
    if wanted not in (*IMPLEMENTATIONS, "auto"):
        raise BlockHashUnavailable(
            f"{ENVIRONMENT_VARIABLE}={wanted!r}: expected one of c, python, auto"
        )
    if wanted == "python":
        return "python"
    if _load_c() is not None:
        return "c"
    if wanted == "c":
        raise BlockHashUnavailable(
            f"{ENVIRONMENT_VARIABLE}=c but the C scanner is not built "
            "(reinstall with a C compiler and libxxhash-dev present)"
        )
    return "python"


def block_count(length: int, block_size: int) -> int:
    return -(-length // block_size)


def _check(offset: int, length: int, block_size: int) -> None:
    if block_size <= 0:
        raise ValueError(f"block size must be positive, not {block_size}")
    if offset < 0 or length < 0:
        raise ValueError("offset and length must not be negative")
    if offset % block_size:
        raise ValueError(f"offset {offset} is not a multiple of the block size {block_size}")


def hash_blocks_python(fd: int, offset: int, length: int, block_size: int) -> array[int]:
    _check(offset, length, block_size)
    hashes: array[int] = array("Q")
    end = offset + length
    per_chunk = max(1, _PYTHON_CHUNK // block_size) * block_size
    position = offset
    while position < end:
        wanted = min(per_chunk, end - position)
        chunk = _read_full(fd, wanted, position)
        for start in range(0, wanted, block_size):
            hashes.append(xxhash.xxh3_64_intdigest(chunk[start : start + block_size]))
        position += wanted
    return hashes


def _read_full(fd: int, length: int, offset: int) -> bytes:
    parts = []
    done = 0
    while done < length:
        part = os.pread(fd, length - done, offset + done)
        if not part:
            break  # the file ended early: hash what there is, as the C scanner does
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def hash_blocks_c(fd: int, offset: int, length: int, block_size: int) -> array[int]:
    _check(offset, length, block_size)
    module = _load_c()
    if module is None:
        raise BlockHashUnavailable("the C scanner is not built")
    hashes: array[int] = array("Q", bytes(8 * block_count(length, block_size)))
    if not hashes:
        return hashes
    out = module.ffi.from_buffer("uint64_t[]", hashes)
    result = module.lib.tandem_hash_blocks(fd, offset, length, block_size, out)
    if result < 0:
        raise OSError(-result, os.strerror(-result))
    return hashes


def hash_blocks(
    fd: int, offset: int, length: int, block_size: int = DEFAULT_BLOCK_SIZE
) -> array[int]:
    """Hashes of the blocks of ``[offset, offset + length)`` of ``fd``, one per block."""
    if implementation() == "c":
        return hash_blocks_c(fd, offset, length, block_size)
    return hash_blocks_python(fd, offset, length, block_size)
