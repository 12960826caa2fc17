"""cffi (API mode) build of the block-hash scanner; `pip install` compiles it via setup.py."""

from cffi import FFI

# relative to the project root, where setup.py runs: setuptools refuses absolute source paths
HERE = "native"

ffibuilder = FFI()
ffibuilder.cdef(
    "int64_t tandem_hash_blocks(int fd, uint64_t offset, uint64_t length, uint64_t block_size,"
    " uint64_t *out);"
)
ffibuilder.set_source(
    "tandem.native._blockhash",
    '#include "blockhash.h"',
    sources=[f"{HERE}/blockhash.c"],
    include_dirs=[HERE],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
