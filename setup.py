"""Only for what pyproject.toml cannot say: the cffi-compiled block-hash scanner (native/)."""

from setuptools import setup

setup(cffi_modules=["native/build_blockhash.py:ffibuilder"])
