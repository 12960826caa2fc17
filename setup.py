"""Only for what pyproject.toml cannot say: the cffi-compiled C parts (native/): the block-hash
scanner and the FUSE data plane."""

from setuptools import setup

setup(
    cffi_modules=[
        "native/build_blockhash.py:ffibuilder",
        "native/build_dataplane.py:ffibuilder",
    ]
)
