"""cffi (API mode) build of the native data plane; `pip install` compiles it via setup.py.

The declarations below are read from dataplane.h itself (everything between the include guard
and the end, preprocessor lines dropped), so the C header is the one definition of the ABI."""

import os
import re

from cffi import FFI

# relative to the project root, where setup.py runs: setuptools refuses absolute source paths
HERE = "native"


def _declarations() -> str:
    header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "dataplane.h")
    with open(header, encoding="utf-8") as source:
        text = source.read()
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))


ffibuilder = FFI()
ffibuilder.cdef(_declarations())
ffibuilder.set_source(
    "tandem.native._dataplane",
    '#include "dataplane.h"',
    sources=[f"{HERE}/dataplane.c"],
    include_dirs=[HERE, "/usr/include/fuse3"],
    libraries=["fuse3", "pthread"],
    extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wextra", "-D_FILE_OFFSET_BITS=64"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
